"""The base model's output head on the last positions only (``head_on_last``), where nothing else is read.

The head (``lm_head``: the largest matmul of a small model, and the ``[n, vocab]`` logits, softcap
and cross-entropy at nanochat's 65,536 tokens) is the only part of a forward whose work at a
position reaches nothing but that position's output; the trunk runs everywhere (attention carries
every position forward). Two readers need only the last positions: the teacher's full-context pass
(``training.guided.horizon_saliency`` reads the horizon's loss: D41) and inference's recompute of
the KV cache after a refocus (only the next token's logits). The result at those positions is the
same quantity; the positions dropped contributed nothing (exactly zero gradient in the teacher's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class LastPositions(nn.Module):
    """``head`` applied to the last ``n`` positions of ``x[B, T, D]``: ``[B, n, vocab]``."""

    def __init__(self, head: nn.Module, n: int) -> None:
        super().__init__()
        self.head, self.n = head, n

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.head(x_BTD[:, -self.n:])


@contextlib.contextmanager
def head_on_last(model: nn.Module, n: int) -> Iterator[None]:
    """Within the block, ``model.lm_head`` (nanochat's ``GPT``, ``TinyGPT``) sees the last ``n`` positions
    only, so a forward given ``targets[B, n]`` returns the NLL of those positions (``targets`` None: their
    logits ``[B, n, vocab]``); restored on exit. The swap is on the model object: the plugin runs
    the model from one thread (nested blocks compose)."""
    head = model.lm_head
    model.lm_head = LastPositions(head, n)
    try:
        yield
    finally:
        model.lm_head = head
