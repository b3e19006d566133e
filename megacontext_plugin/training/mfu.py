"""Honest MFU: executed FLOPs over the device's peak.

``peak_flops(name)`` is nanochat's table (``nanochat/common.py`` ``get_peak_flops`` at the pin,
bf16 dense peak per device), copied so the plugin never imports nanochat: an unknown GPU, the
CPU and MPS give ``inf``, so MFU reads 0 / is not reported rather than a wrong guess.

``base_flops_fn(model)`` returns the base model's forward+backward FLOPs per token at an
attention length ``context``: a model's own ``flops_per_token(context)`` (``TinyGPT``), or, for
nanochat's ``GPT``, its ``estimate_flops()`` (computed at ``sequence_len``) with the attention
term re-evaluated at ``context`` (``12 * n_head * head_dim * min(window, context)`` per layer,
nanochat's formula): a ``--mc`` row of ``W`` entries attends over ``W``, not ``T``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

logger = logging.getLogger("megacontext_plugin.training")


def peak_flops(device_name: str) -> float:
    """bf16 peak FLOP/s of one device by name (nanochat's ``get_peak_flops``); ``inf`` when unknown."""
    name = device_name.lower()
    # NVIDIA Blackwell
    if "gb200" in name or "grace blackwell" in name:
        return 2.5e15
    if "b200" in name:
        return 2.25e15
    if "b100" in name:
        return 1.8e15
    # NVIDIA Hopper
    if "h200" in name:
        return 836e12 if ("nvl" in name or "pcie" in name) else 989e12
    if "h100" in name:
        if "nvl" in name:
            return 835e12
        return 756e12 if "pcie" in name else 989e12
    if "h800" in name:
        return 989e12 if "nvl" in name else 756e12
    # NVIDIA Ampere data center
    if "a100" in name or "a800" in name:
        return 312e12
    if "a40" in name:
        return 149.7e12
    if "a30" in name:
        return 165e12
    # NVIDIA Ada data center
    if "l40s" in name or "l40-s" in name or "l40 s" in name:
        return 362e12
    if "l4" in name:
        return 121e12
    # AMD CDNA
    if "mi355" in name:
        return 2.5e15
    if "mi325" in name or "mi300x" in name:
        return 1.3074e15
    if "mi300a" in name:
        return 980.6e12
    if "mi250x" in name:
        return 383e12
    if "mi250" in name:
        return 362.1e12
    # Intel
    if "data center gpu max 1550" in name:
        try:
            units = torch.xpu.get_device_properties("xpu").max_compute_units
        except Exception:
            return math.inf
        return 512 * units * 1300 * 10**6
    # consumer RTX
    if "5090" in name:
        return 209.5e12
    if "4090" in name:
        return 165.2e12
    if "3090" in name:
        return 71e12
    return math.inf


def device_peak_flops(device: torch.device | str) -> float:
    """Peak FLOP/s of ``device``: the table for a CUDA / XPU device, ``inf`` for CPU and MPS."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    elif device.type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        name = torch.xpu.get_device_name(device)
    else:
        return math.inf
    peak = peak_flops(name)
    if math.isinf(peak):
        logger.warning("megacontext: peak FLOPs unknown for %s: mc/mfu is not reported", name)
    return peak


def base_flops_fn(model: torch.nn.Module) -> Callable[[int], int]:
    """``context -> forward+backward FLOPs per token`` of the base model (see the module docstring)."""
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return own
    estimate = getattr(model, "estimate_flops", None)
    if not callable(estimate):
        raise TypeError(f"{type(model).__name__} has neither flops_per_token(context) nor estimate_flops()")
    cfg = model.config
    heads, head_dim, seq = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.sequence_len
    windows = [w[0] if isinstance(w, tuple | list) else int(w)
               for w in getattr(model, "window_sizes", [-1] * cfg.n_layer)]

    def attention(context: int) -> int:
        return sum(12 * heads * head_dim * (context if w < 0 else min(w, context)) for w in windows)

    rest = int(estimate()) - attention(seq)

    def per_token(context: int) -> int:
        return rest + attention(context)

    return per_token


def mfu_percent(flops: float, seconds: float, peak: float) -> float:
    """``100 * flops / (seconds * peak)``; NaN when it cannot be computed (no time, unknown peak)."""
    if seconds <= 0 or not math.isfinite(peak) or peak <= 0:
        return math.nan
    return 100.0 * flops / (seconds * peak)
