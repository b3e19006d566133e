"""The focus allocator: turns LensNet utilities into legal working-context edits within the budget.

``FocusAllocator(config).refocus(wc, scorer)`` runs ``config.iterations`` rounds. Each round
scores the current WC (``scorer(wc) -> utilities[W]`` in [-1, 1]: positive = worth expanding,
negative = cheap to collapse), chooses up to ``max_replacements`` edits (``select_edits``:
thresholds, protected tail, cooldown, conflicts, budget; see ``focus.selection``), applies them
in one vectorised ``WorkingContext.edit`` pass, and records the flipped nodes for the cooldown.
A round that chooses nothing ends the refocus early (re-scoring an unchanged WC is wasted work).
The refocus closes with the context pass (``focus.selection.context_edits``, when
``expand_neighbours`` > 0): the level-1 gists left of the level-1 gists expanded on their own
utility are expanded with the room the rounds left, so the words that introduce a raw island come
with it without taking room from what is worth expanding on its own (D30).

The allocator is stateful: it counts refocus calls (the cooldown clock), remembers recent flips
and owns the seeded Generator of ``stochastic_greedy``. Use one allocator per sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..context.working_context import WorkingContext, WorkingContextError
from .config import FocusConfig, FocusError
from .cooldown import MAX_NODE_INDEX, CooldownTracker
from .selection import EditPlan, context_edits, float32_below, select_edits

Utilities = np.ndarray | torch.Tensor | Sequence[float]
Scorer = Callable[[WorkingContext], Utilities]
"""wc -> utilities[W] (numpy, torch or a sequence), one per entry, in [-1, 1]."""


@dataclass(frozen=True)
class FocusReport:
    """What one ``refocus`` call did (counts are summed over its iterations)."""

    refocus_index: int
    """0-based number of this refocus call on this allocator (the cooldown clock)."""
    iterations: int
    """Rounds actually run (a round with no edit ends the refocus)."""
    expands: int
    """Expansions, those of the context pass included."""
    context_expands: int
    """Expansions made by the context pass (neighbours of this refocus's level-1 expansions)."""
    collapses: int
    candidates: int
    rejected_cooldown: int
    rejected_conflict: int
    rejected_budget: int
    length_before: int
    length_after: int
    swap_rate: float
    """Entries replaced (1 per expansion, K per collapse) divided by ``length_before``."""
    bookkeeping_ms: float
    """Time spent choosing and applying edits (everything but the scorer)."""
    scorer_ms: float
    total_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def residency(before: WorkingContext, after: WorkingContext) -> float:
    """Share of ``before``'s entries (level, node) still present in ``after``; 1.0 for an empty WC."""
    if len(before) == 0:
        return 1.0
    key_b = before.levels.astype(np.int64) * (1 << 56) + before.indices.astype(np.int64)
    key_a = after.levels.astype(np.int64) * (1 << 56) + after.indices.astype(np.int64)
    return float(np.isin(key_b, key_a, assume_unique=True).mean())


def as_utilities(values: Utilities, length: int) -> np.ndarray:
    """``utilities[length]`` as float32 numpy; raises ``FocusError`` on a bad shape or non-finite value."""
    if isinstance(values, torch.Tensor):
        u = values.detach().to(device="cpu", dtype=torch.float32).numpy()
    else:
        u = np.asarray(values, dtype=np.float32)
    if u.shape != (length,):
        raise FocusError(f"scorer returned utilities of shape {u.shape}, expected ({length},): one per WC entry")
    if not np.isfinite(u).all():
        raise FocusError("scorer returned a non-finite utility (NaN or inf)")
    return u


class FocusAllocator:
    """Greedy or stochastic-greedy focus allocator with cooldown (see module docstring)."""

    def __init__(self, config: FocusConfig) -> None:
        if not isinstance(config, FocusConfig):
            raise FocusError(f"FocusAllocator needs a FocusConfig, got {type(config).__name__}")
        self._config = config
        self._cooldown = CooldownTracker(config.cooldown)
        self._rng = np.random.default_rng(config.seed)
        self._refocus_index = 0
        self._anchors = np.zeros(0, dtype=np.int64)  # level-1 nodes expanded since the last context pass
        self._anchor_utilities = np.zeros(0, dtype=np.float32)

    @property
    def config(self) -> FocusConfig:
        return self._config

    @property
    def refocus_count(self) -> int:
        """Refocus calls made so far (the index the next call will have)."""
        return self._refocus_index

    @property
    def cooldown_tracker(self) -> CooldownTracker:
        return self._cooldown

    def reset(self) -> None:
        """Forget the cooldown memory, restart the refocus count and re-seed the Generator."""
        self._cooldown = CooldownTracker(self._config.cooldown)
        self._rng = np.random.default_rng(self._config.seed)
        self._refocus_index = 0
        self._anchors = np.zeros(0, dtype=np.int64)
        self._anchor_utilities = np.zeros(0, dtype=np.float32)

    def _check_input(self, wc: WorkingContext) -> None:
        cfg = self._config
        if wc.num_tokens > MAX_NODE_INDEX:
            raise WorkingContextError(f"histories longer than {MAX_NODE_INDEX} tokens are not supported")
        tail_start = wc.num_tokens - min(cfg.recent_tokens, wc.num_tokens)
        first_in_tail = int(np.searchsorted(wc.ends, tail_start, side="right"))  # ends ascend
        if wc.levels[first_in_tail:].any():
            raise WorkingContextError(
                f"the working context has a gist inside the protected last {cfg.recent_tokens} tokens; "
                "the allocator needs the tail raw"
            )

    def plan(self, wc: WorkingContext, utilities: Utilities) -> EditPlan:
        """The edits one iteration would choose now (consumes randomness; records nothing)."""
        self._check_input(wc)
        u = as_utilities(utilities, len(wc))
        return select_edits(wc, u, self._config, self._cooldown, self._refocus_index, self._rng)

    def refocus(self, wc: WorkingContext, scorer: Scorer, *,
                context_pass: bool = True) -> tuple[WorkingContext, FocusReport]:
        """Run up to ``iterations`` score-select-apply rounds, then the context pass (the neighbours
        of the level-1 gists expanded on their own utility, with the room left; D30); return the new
        WC and a report. ``context_pass=False`` defers the pass to a later call, for callers that
        run one refocus as several single-round calls (training's batched re-scoring)."""
        t_start = time.perf_counter()
        self._check_input(wc)
        cfg = self._config
        K = wc.block_size
        now = self._refocus_index
        length_before = len(wc)
        totals = dict.fromkeys(
            ("expands", "collapses", "candidates", "rejected_cooldown", "rejected_conflict", "rejected_budget"), 0
        )
        scorer_s = 0.0
        rounds = 0
        for _ in range(cfg.iterations):
            t0 = time.perf_counter()
            raw = scorer(wc)
            scorer_s += time.perf_counter() - t0
            u = as_utilities(raw, len(wc))
            plan = select_edits(wc, u, cfg, self._cooldown, now, self._rng)
            rounds += 1
            totals["candidates"] += plan.candidates
            totals["rejected_cooldown"] += plan.rejected_cooldown
            totals["rejected_conflict"] += plan.rejected_conflict
            totals["rejected_budget"] += plan.rejected_budget
            if plan.num_edits == 0:
                break
            totals["expands"] += int(plan.expand.size)
            totals["collapses"] += int(plan.collapse.size)
            own = plan.expand[(wc.levels[plan.expand] == 1)
                              & (u[plan.expand] > float32_below(cfg.expand_threshold))]
            self._anchors = np.concatenate([self._anchors, wc.indices[own]])
            self._anchor_utilities = np.concatenate([self._anchor_utilities, u[own]])
            wc = self._apply(wc, plan, now)
        context_expands = 0
        if context_pass:
            plan = context_edits(wc, self._anchors, self._anchor_utilities, cfg, self._cooldown, now)
            self._anchors = np.zeros(0, dtype=np.int64)
            self._anchor_utilities = np.zeros(0, dtype=np.float32)
            if plan.expand.size:
                context_expands = int(plan.expand.size)
                totals["expands"] += context_expands
                wc = self._apply(wc, plan, now)
        self._refocus_index += 1
        self._cooldown.prune(self._refocus_index)
        total_s = time.perf_counter() - t_start
        replaced = totals["expands"] + K * totals["collapses"]
        return wc, FocusReport(
            refocus_index=now,
            iterations=rounds,
            context_expands=context_expands,
            length_before=length_before,
            length_after=len(wc),
            swap_rate=replaced / length_before if length_before else 0.0,
            bookkeeping_ms=(total_s - scorer_s) * 1e3,
            scorer_ms=scorer_s * 1e3,
            total_ms=total_s * 1e3,
            **totals,
        )

    def _apply(self, wc: WorkingContext, plan: EditPlan, now: int) -> WorkingContext:
        """``wc`` with ``plan`` applied, its flipped nodes recorded for the cooldown: each expanded
        node, and each parent made by a collapse."""
        K = wc.block_size
        self._cooldown.record(np.concatenate([wc.levels[plan.expand], wc.levels[plan.collapse] + 1]),
                              np.concatenate([wc.indices[plan.expand], wc.indices[plan.collapse] // K]), now)
        return wc._apply(plan.expand, plan.collapse)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: refocus count, cooldown memory, Generator state."""
        return {
            "refocus_index": self._refocus_index,
            "cooldown": self._cooldown.state_dict(),
            "rng": self._rng.bit_generator.state,
            "context_anchors": self._anchors.tolist(),
            "context_anchor_utilities": self._anchor_utilities.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refocus_index = int(state["refocus_index"])
        self._cooldown.load_state_dict(state["cooldown"])
        self._rng.bit_generator.state = state["rng"]
        self._anchors = np.asarray(state.get("context_anchors", []), dtype=np.int64)
        self._anchor_utilities = np.asarray(state.get("context_anchor_utilities", []), dtype=np.float32)
