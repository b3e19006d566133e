"""The working-context budget a run trains at: the curriculum's schedule and its floor.

``curriculum_budget`` anneals the entries per variant linearly from 80% of the sequence length
down to ``--mc_train_wc_length`` over training, rounded down to a multiple of ``max(K, T/16)``
(a handful of distinct shapes per run, each compiled once) and never below the smallest budget
that leaves random variants a choice (``smallest_useful_budget``).

The budget is the allocator's (``FocusConfig.budget``), so it is defined here, below every room
that reads it: training's controller and auto-batch follow the schedule, and evaluation validates a
checkpoint at its last budget (``evaluation.nanochat_model.validation_budget``).
"""

from __future__ import annotations

import math

from ..config import MCConfig
from ..context.working_context import WorkingContext


def minimal_length(sequence_len: int, block_size: int, recent_tokens: int) -> int:
    """Entries of the coarsest legal working context (the smallest budget that can hold a variant)."""
    return len(WorkingContext.coarsest(sequence_len, block_size, recent_tokens))


def smallest_useful_budget(sequence_len: int, block_size: int, recent_tokens: int) -> int:
    """The coarsest layout plus room for two expansions (so random variants can differ)."""
    return min(sequence_len, minimal_length(sequence_len, block_size, recent_tokens) + 2 * (block_size - 1))


def curriculum_budget(cfg: MCConfig, step: int, total_steps: int, sequence_len: int, floor: int) -> int:
    """Working-context entries per variant at MC step ``step`` of ``total_steps``, never below ``floor``
    (``smallest_useful_budget``, computed once by the caller: it is constant over a run). The budget
    reaches its final value after ``--mc_anneal_fraction`` of the steps and stays there."""
    T = sequence_len
    final = cfg.mc_train_wc_length
    start = max(0.8, final)
    anneal_steps = max(1.0, cfg.mc_anneal_fraction * total_steps - 1)
    frac = start + (final - start) * min(1.0, step / anneal_steps)
    if cfg.mc_wc_budget:
        frac = min(frac, cfg.mc_wc_budget / T)
    quantum = max(cfg.block_size, T // 16)
    budget = max(quantum, math.floor(frac * T) // quantum * quantum)
    return min(T, max(budget, floor))
