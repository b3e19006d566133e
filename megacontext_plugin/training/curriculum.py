"""Auto-batch: how much work a ``--mc`` step does over the budget schedule (``focus.budget``).

``auto_batch`` (``--mc_auto_batch 1``): an MC step feeds the base model ``V`` rows of up to
``W`` entries per sequence instead of one row of ``T`` tokens. The multiplier
``m = V * W / T`` says how much more the base model processes. Auto-batch divides the device
batch by the peak multiplier (the first steps, ``W`` = 80% of T: memory stays that of vanilla)
and the iterations by the mean multiplier over the schedule, so that an MC run processes the
same number of base-model positions as vanilla. The data each step consumes
(``--total-batch-size``) is unchanged; gradient accumulation grows with the smaller device batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import MCConfig
from ..focus.budget import curriculum_budget, smallest_useful_budget


@dataclass(frozen=True)
class AutoBatchPlan:
    device_batch_size: int
    num_iterations: int
    peak_multiplier: float
    """Base-model positions per sequence relative to vanilla at the widest budget."""
    mean_multiplier: float
    """The same, averaged over the schedule."""
    applied: bool

    def describe(self) -> str:
        verb = "auto-batch" if self.applied else "auto-batch off"
        return (f"{verb}: device batch {self.device_batch_size}, {self.num_iterations} iterations "
                f"(MC processes {self.mean_multiplier:.2f}x vanilla's positions per sequence on average, "
                f"{self.peak_multiplier:.2f}x at the widest budget)")


def auto_batch(cfg: MCConfig, device_batch_size: int, num_iterations: int, sequence_len: int) -> AutoBatchPlan:
    """Device batch and iterations for a ``--mc`` run (unchanged when ``--mc_auto_batch 0``)."""
    if device_batch_size < 1 or num_iterations < 1:
        raise ValueError("device_batch_size and num_iterations must be >= 1")
    floor = smallest_useful_budget(sequence_len, cfg.block_size, cfg.training_tail(sequence_len))
    grid = 1000
    budgets = [curriculum_budget(cfg, s, grid, sequence_len, floor) for s in range(grid)]
    V, T = cfg.num_variants, sequence_len
    peak = V * max(budgets) / T
    mean = V * sum(budgets) / len(budgets) / T
    if not cfg.mc_auto_batch:
        return AutoBatchPlan(device_batch_size, num_iterations, peak, mean, applied=False)
    batch = max(1, math.floor(device_batch_size / peak))
    # the plain steps (--mc_plain_steps) feed the base model what vanilla does: only the MC steps shrink
    plain = min(cfg.mc_plain_steps, num_iterations)
    iterations = plain + max(1, round((num_iterations - plain) / mean)) if num_iterations > plain else plain
    return AutoBatchPlan(batch, iterations, peak, mean, applied=True)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (>= 1): a smaller device batch that still
    divides the host's total batch, so its gradient-accumulation arithmetic stays exact."""
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))


def adjusted_device_batch(cfg: MCConfig, device_batch_size: int, sequence_len: int) -> tuple[int, str | None]:
    """``--device-batch-size`` under ``--mc_auto_batch``: the batch to use and, when it changed, the
    line that says why (a step feeds the base model more positions than vanilla's)."""
    plan = auto_batch(cfg, device_batch_size, 1000, sequence_len)
    batch = largest_divisor_at_most(device_batch_size, plan.device_batch_size)
    if batch == device_batch_size:
        return batch, None
    return batch, (f"auto-batch: --device-batch-size {device_batch_size} -> {batch} (a step feeds the base model "
                   f"{plan.peak_multiplier:.2f}x vanilla's positions at the widest budget; --mc_auto_batch 0 keeps "
                   f"yours)")


def adjusted_iterations(cfg: MCConfig, num_iterations: int, sequence_len: int) -> tuple[int, str | None]:
    """The host's iteration count under ``--mc_auto_batch`` and, when it changed, the line that says why."""
    plan = auto_batch(cfg, 1, num_iterations, sequence_len)
    if plan.num_iterations == num_iterations:
        return num_iterations, None
    return plan.num_iterations, (f"auto-batch: {num_iterations} -> {plan.num_iterations} iterations (MC processes "
                                 f"{plan.mean_multiplier:.2f}x vanilla's base-model positions per sequence on "
                                 f"average; --mc_auto_batch 0 keeps yours)")


def mid_loader_iterations(num_iterations: int, device_batch_size: int,
                          adjusted_batch_size: int) -> tuple[int, str | None]:
    """``--num-iterations`` for upstream's ``mid_train`` after auto-batch lowered its device batch.

    mid_train's data loader counts micro-batches against ``--num-iterations`` (its progress, the
    schedule's input, too) and reads one ahead, so with ``k`` micro-batches per optimizer step the
    requested count would end the stage after a k-th of its steps with the schedule past its end. A count
    of ``(N - 1) * k + 1`` micro-batches ends it where upstream ends ``N`` at one micro-batch per step (its
    checkpoint ``N - 1``, the schedule's progress reaching exactly 1). ``num_iterations <= 0`` (one epoch,
    progress by consumption) and an unchanged batch need nothing."""
    if num_iterations <= 0 or adjusted_batch_size == device_batch_size:
        return num_iterations, None
    k = device_batch_size // adjusted_batch_size  # auto-batch picks a divisor: the total batch is unchanged
    counted = (num_iterations - 1) * k + 1
    return counted, (f"auto-batch: mid_train's loader counts micro-batches ({k} per step now): --num-iterations "
                     f"{num_iterations} -> {counted}, the same {num_iterations - 1} optimizer steps and schedule")
