"""What the plugin reads of the host's base model (nanochat's ``GPT``, or ``TinyGPT`` in tests)."""

from __future__ import annotations

import torch
from torch import nn


def model_wte(model: nn.Module) -> nn.Embedding:
    """The token embedding: ``transformer.wte`` in nanochat, ``wte`` in ``TinyGPT``."""
    transformer = getattr(model, "transformer", None)
    return transformer["wte"] if transformer is not None else model.wte


def model_device(model: nn.Module) -> torch.device:
    get = getattr(model, "get_device", None)
    return get() if callable(get) else next(model.parameters()).device


def model_dims(model: nn.Module) -> tuple[int, int, int]:
    """``(n_embd, head_dim, sequence_len)`` of a nanochat ``GPT`` (or a model with the same config)."""
    cfg = model.config
    return cfg.n_embd, cfg.n_embd // cfg.n_head, cfg.sequence_len

