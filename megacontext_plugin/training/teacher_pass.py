"""The teacher's full-context pass reads the loss of the horizon only (``guided.horizon_saliency``):
the base model's output head runs on those positions alone.

The head (``lm_head``: the largest matmul of a small model, and the ``[T, vocab]`` logits, softcap
and cross-entropy at nanochat's 65,536 tokens) is the only part of the forward whose work at a
position reaches nothing but that position's loss; the trunk must run everywhere (attention carries
every position into the horizon). Slicing it leaves the horizon's loss, and so the saliency, the
same quantity: the positions dropped contributed exactly zero gradient.
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
    only, so a forward given ``targets[B, n]`` returns the NLL of those positions; restored on exit."""
    head = model.lm_head
    model.lm_head = LastPositions(head, n)
    try:
        yield
    finally:
        model.lm_head = head
