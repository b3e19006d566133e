"""Honest FLOPs of a ``--mc`` training step: the work actually executed, no fixed multiplier.

Forward+backward = 3x the forward matmul FLOPs (the usual 2 + 4 per multiply-add, as in
nanochat's ``estimate_flops``). A step of ``B`` sequences of length ``T`` with ``V`` variants of
``W`` entries (padding included: it is computed) costs:

- base model: ``B * V * W * base_flops_per_token(W)`` (attention at length ``W``);
- GistNet: ``3 * flops_per_gist * B * sum_{l >= 1} T // K**l`` (every level is built);
- LensNet: ``3 * lensnet.flops(W, H, B*(V-1))`` (it scores the random variants only) plus one
  forward of the KL anchor when ``--mc_lens_kl_weight`` > 0, plus one forward of ``B`` rows of
  ``W - H`` entries per on-policy scoring call (``lens_calls``, no grad);
- the teacher's full-context pass (``training.guided.horizon_saliency``), when it runs: a forward
  and a backward to the input embeddings only (no weight gradients), 2/3 of training's, with the
  output head (``h`` of ``f`` per token) on the last H positions only (``nets.output_head``):
  ``2/3 * B * (T * (f(T) - h) + H * h)``.

Vanilla: ``B * T * base_flops_per_token(T)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..nets import GistNet, LensNet


@dataclass(frozen=True)
class StepFlops:
    base: int
    gistnet: int
    lensnet: int
    teacher: int = 0
    """The teacher's full-context pass (base-model work outside the packed batch)."""

    @property
    def total(self) -> int:
        return self.base + self.gistnet + self.lensnet + self.teacher


def gists_per_sequence(sequence_len: int, block_size: int) -> int:
    total, width = 0, block_size
    while width <= sequence_len:
        total += sequence_len // width
        width *= block_size
    return total


def mc_step_flops(base_flops_per_token: Callable[[int], int], gistnet: GistNet, lensnet: LensNet, *, batch: int,
                  variants: int, width: int, sequence_len: int, block_size: int, horizon: int,
                  kl_anchor: bool = True, teacher_pass: bool = False, lens_calls: int = 0,
                  head_flops_per_token: int = 0) -> StepFlops:
    """FLOPs of one MC micro-batch (see the module docstring for the formula)."""
    rows = batch * variants
    base = rows * width * base_flops_per_token(width)
    gist = 3 * gistnet.flops_per_gist() * batch * gists_per_sequence(sequence_len, block_size)
    lens = (4 if kl_anchor else 3) * lensnet.flops(width, horizon, batch * (variants - 1))
    lens += lens_calls * lensnet.flops(max(width - horizon, 1), horizon, batch)
    trunk = sequence_len * (base_flops_per_token(sequence_len) - head_flops_per_token)
    teacher = 2 * batch * (trunk + horizon * head_flops_per_token) // 3 if teacher_pass else 0
    return StepFlops(base, gist, lens, teacher)


def vanilla_step_flops(base_flops_per_token: Callable[[int], int], *, batch: int, sequence_len: int) -> int:
    return batch * sequence_len * base_flops_per_token(sequence_len)
