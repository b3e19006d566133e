"""Focus allocator: knobs, thresholds, budget, conflicts, cooldown, sampling (worked examples)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from megacontext_plugin.context import WorkingContext, WorkingContextError
from megacontext_plugin.focus import CooldownTracker, FocusAllocator, FocusConfig, FocusError
from megacontext_plugin.focus.cooldown import node_keys


def wc_of(entries: list[tuple[int, int]], block_size: int, num_tokens: int) -> WorkingContext:
    return WorkingContext.from_entries([lv for lv, _ in entries], [ix for _, ix in entries], block_size, num_tokens)


def const_scorer(values: Sequence[float]) -> Callable[[WorkingContext], np.ndarray]:
    return lambda wc: np.asarray(values, dtype=np.float32)


def by_level(wc: WorkingContext, table: dict[int, float]) -> np.ndarray:
    """Utilities that depend only on each entry's level (0.0 for levels not in ``table``)."""
    return np.array([table.get(int(lv), 0.0) for lv in wc.levels], dtype=np.float32)


def alloc(**kwargs: object) -> FocusAllocator:
    kwargs.setdefault("budget", 1000)
    kwargs.setdefault("recent_tokens", 0)
    kwargs.setdefault("cooldown", 0)
    return FocusAllocator(FocusConfig(**kwargs))  # type: ignore[arg-type]


# K = 4, N = 22: LOD2 [0, 16), LOD1 [16, 20), two raw tokens
EXAMPLE = [(2, 0), (1, 4), (0, 20), (0, 21)]


# ---------------------------------------------------------------- knobs
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0}, "budget must be an integer >= 1"),
        ({"budget": 4.0}, "budget must be an integer"),
        ({"type": "beam"}, "unknown allocator type 'beam'"),
        ({"expand_threshold": -0.1}, "expand_threshold must be >= 0"),
        ({"collapse_threshold": math.nan}, "collapse_threshold must be a finite number"),
        ({"max_replacements": 0}, "max_replacements must be an integer >= 1"),
        ({"iterations": 0}, "iterations must be an integer >= 1"),
        ({"soft_max_length": 11}, r"soft_max_length \(11\) is larger than the budget \(10\)"),
        ({"soft_max_length": -1}, "soft_max_length must be an integer >= 0"),
        ({"recent_tokens": -1}, "recent_tokens must be an integer >= 0"),
        ({"cooldown": True}, "cooldown must be an integer"),
        ({"sample_top_k": 0}, "sample_top_k must be an integer >= 1"),
        ({"sample_temperature": 0.0}, "sample_temperature must be > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"max_level": 0}, "max_level must be an integer >= 1"),
    ],
)
def test_bad_knobs_raise(kwargs: dict[str, object], message: str) -> None:
    kwargs = {"budget": 10, **kwargs}
    with pytest.raises(FocusError, match=message):
        FocusConfig(**kwargs)  # type: ignore[arg-type]


def test_soft_max_defaults_to_budget() -> None:
    assert FocusConfig(budget=10).target_length == 10
    assert FocusConfig(budget=10, soft_max_length=0).target_length == 10
    assert FocusConfig(budget=10, soft_max_length=7).target_length == 7
    with pytest.raises(FocusError, match="needs a FocusConfig"):
        FocusAllocator({"budget": 10})  # type: ignore[arg-type]


# ---------------------------------------------------------------- thresholds
def test_expands_above_threshold_only() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    out, report = alloc(expand_threshold=0.5).refocus(wc, const_scorer([0.9, 0.5, 0.0, 0.0]))
    assert out.entries()[:5] == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert (report.expands, report.collapses, report.candidates) == (1, 0, 1)
    out, report = alloc(expand_threshold=0.0).refocus(wc, const_scorer([0.9, 0.5, 0.0, 0.0]))
    assert report.expands == 2 and len(out) == 4 + 2 * 3
    _, report = alloc(expand_threshold=0.0).refocus(wc, const_scorer([0.0, -0.5, 0.3, 0.3]))
    assert report.expands == 0  # zero is not above a zero threshold; raw tokens are not gists


def test_thresholds_compare_exactly_with_float32_utilities() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    u = np.float32(0.1)  # 0.100000001490116... > 0.1, though float32(0.1) == u
    _, report = alloc(expand_threshold=0.1).refocus(wc, const_scorer([u, 0.0, 0.0, 0.0]))
    assert report.expands == 1
    below = np.nextafter(np.float32(0.1), np.float32(0))  # 0.0999999940... < 0.1
    _, report = alloc(expand_threshold=0.1).refocus(wc, const_scorer([below, 0.0, 0.0, 0.0]))
    assert report.expands == 0


def test_collapse_uses_the_mean_utility_of_the_group() -> None:
    wc = WorkingContext.from_entries([1, 1, 0, 0], [0, 1, 4, 5], 2, 6)
    utilities = [-0.9, 0.3, 0.0, 0.0]  # group (1,0),(1,1): mean -0.3
    out, report = alloc(collapse_threshold=0.2, expand_threshold=0.5).refocus(wc, const_scorer(utilities))
    assert out.entries() == [(2, 0), (0, 4), (0, 5)] and report.collapses == 1
    _, report = alloc(collapse_threshold=0.3, expand_threshold=0.5).refocus(wc, const_scorer(utilities))
    assert report.collapses == 0  # -0.3 is not below -0.3


# ---------------------------------------------------------------- ranking, budget, conflicts
def test_max_replacements_takes_the_best() -> None:
    wc = WorkingContext.from_entries([1] * 6, list(range(6)), 2, 12)
    utilities = [0.2, 0.9, 0.4, 0.8, 0.3, 0.7]
    out, report = alloc(max_replacements=3).refocus(wc, const_scorer(utilities))
    assert report.expands == 3
    assert [lv for lv, _ in out.entries()] == [1, 0, 0, 1, 0, 0, 1, 0, 0]  # entries 1, 3, 5 expanded


def test_budget_is_never_exceeded() -> None:
    wc = WorkingContext.from_entries([1] * 6, list(range(6)), 2, 12)
    out, report = alloc(budget=8).refocus(wc, const_scorer([0.9] * 6))
    assert len(out) == 8 and report.expands == 2 and report.rejected_budget == 4
    out, report = alloc(budget=6).refocus(wc, const_scorer([0.9] * 6))
    assert out == wc and report.rejected_budget == 6


def test_a_collapse_ranked_first_frees_budget_for_an_expansion() -> None:
    # K = 2: entries (1,0) (1,1) collapse (|mean| 0.9), then (1,2) expands (0.5) within a full budget
    wc = WorkingContext.from_entries([1, 1, 1, 0, 0], [0, 1, 2, 6, 7], 2, 8)
    out, report = alloc(budget=5, recent_tokens=2).refocus(wc, const_scorer([-0.9, -0.9, 0.5, 0.0, 0.0]))
    assert out.entries() == [(2, 0), (0, 4), (0, 5), (0, 6), (0, 7)]
    assert (report.expands, report.collapses, report.rejected_budget) == (1, 1, 0)


def test_collapses_come_first_above_the_soft_maximum() -> None:
    wc = WorkingContext.from_entries([1, 1, 1, 0, 0], [0, 1, 2, 6, 7], 2, 8)
    utilities = [-0.3, -0.3, 0.9, 0.0, 0.0]
    out, _ = alloc(budget=10, soft_max_length=5, max_replacements=1, recent_tokens=2).refocus(
        wc, const_scorer(utilities)
    )
    assert out.entries()[:3] == [(1, 0), (1, 1), (0, 4)] and len(out) == 6  # at the soft max: best |u|
    out, _ = alloc(budget=10, soft_max_length=4, max_replacements=1, recent_tokens=2).refocus(
        wc, const_scorer(utilities)
    )
    assert out.entries()[0] == (2, 0) and len(out) == 4  # above it: the collapse goes first


def test_conflicts_are_settled_by_rank() -> None:
    wc = WorkingContext.from_entries([1, 1, 0, 0, 0, 0], [0, 1, 4, 5, 6, 7], 2, 8)
    kw = {"expand_threshold": 0.1, "collapse_threshold": 0.1, "recent_tokens": 4}
    out, report = alloc(**kw).refocus(wc, const_scorer([0.6, -1.0, 0, 0, 0, 0]))  # expand 0.6 > |mean| 0.2
    assert out.entries()[:2] == [(0, 0), (0, 1)] and report.rejected_conflict == 1 and report.collapses == 0
    out, report = alloc(**kw).refocus(wc, const_scorer([0.2, -1.0, 0, 0, 0, 0]))  # |mean| 0.4 > 0.2
    assert out.entries()[0] == (2, 0) and report.rejected_conflict == 1 and report.expands == 0


def test_a_group_dropped_for_one_member_does_not_block_the_others() -> None:
    # K = 4 siblings, utilities [0.75, 0.125, -1, -1]: mean -0.28. Rank: expand 0 (0.75), collapse
    # (0.28), expand 1 (0.125). The collapse loses to expand 0, so expand 1 has nothing to lose to.
    wc = WorkingContext.from_entries([1, 1, 1, 1], [0, 1, 2, 3], 4, 16)
    out, report = alloc(expand_threshold=0.0, collapse_threshold=0.0).refocus(
        wc, const_scorer([0.75, 0.125, -1.0, -1.0])
    )
    assert (report.expands, report.collapses, report.rejected_conflict) == (2, 0, 1)
    assert out.entries()[:8] == [(0, t) for t in range(8)]


def test_protected_tail_is_never_touched() -> None:
    wc = WorkingContext.raw(16, 2)
    out, report = alloc(recent_tokens=5).refocus(wc, const_scorer([-1.0] * 16))
    assert out.entries() == [(1, i) for i in range(5)] + [(0, t) for t in range(10, 16)]
    assert report.collapses == 5
    out.validate(recent_tokens=5)
    with pytest.raises(WorkingContextError, match="protected last 9 tokens"):
        alloc(recent_tokens=9).refocus(out, const_scorer([0.0] * len(out)))


# ---------------------------------------------------------------- iterations and reports
def test_iterations_rescore_the_edited_context() -> None:
    calls: list[int] = []

    def scorer(wc: WorkingContext) -> np.ndarray:
        calls.append(len(wc))
        return np.full(len(wc), -0.5, dtype=np.float32)

    out, report = alloc(iterations=3).refocus(WorkingContext.raw(8, 2), scorer)
    assert calls == [8, 4, 2]
    assert out.entries() == [(3, 0)]
    assert (report.iterations, report.collapses, report.length_before, report.length_after) == (3, 7, 8, 1)
    assert report.swap_rate == pytest.approx(7 * 2 / 8)
    calls.clear()
    _, report = alloc(iterations=5).refocus(WorkingContext.raw(8, 2), scorer)
    assert calls == [8, 4, 2, 1] and report.iterations == 4  # the round without an edit ends the refocus


def test_report_timings_and_fields() -> None:
    _, report = alloc().refocus(wc_of(EXAMPLE, 4, 22), const_scorer([0.9, 0.0, 0.0, 0.0]))
    assert report.refocus_index == 0 and report.expands == 1
    assert report.swap_rate == pytest.approx(1 / 4)
    assert report.total_ms >= report.bookkeeping_ms >= 0 and report.scorer_ms >= 0
    assert report.as_dict()["expands"] == 1


def test_scorer_output_is_checked_and_torch_is_accepted() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    with pytest.raises(FocusError, match=r"shape \(3,\), expected \(4,\)"):
        alloc().refocus(wc, const_scorer([0.0, 0.0, 0.0]))
    with pytest.raises(FocusError, match="non-finite"):
        alloc().refocus(wc, const_scorer([math.nan, 0.0, 0.0, 0.0]))
    out, _ = alloc().refocus(wc, lambda w: torch.tensor([0.9, 0.0, 0.0, 0.0], requires_grad=True))
    assert len(out) == 7


# ---------------------------------------------------------------- cooldown
def test_cooldown_blocks_flipping_back_until_it_has_passed() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    allocator = alloc(cooldown=2, recent_tokens=2)
    expanded, _ = allocator.refocus(wc, lambda w: by_level(w, {2: 0.9}))  # refocus 0: (2, 0) expands
    assert expanded.entries()[0] == (1, 0)
    collapse_all = lambda w: by_level(w, {1: -0.9})  # noqa: E731
    same, report = allocator.refocus(expanded, collapse_all)  # refocus 1: 1 - 0 < 2
    assert same == expanded and report.rejected_cooldown == 1
    back, report = allocator.refocus(same, collapse_all)  # refocus 2: 2 - 0 >= 2
    assert back == wc and report.collapses == 1 and report.rejected_cooldown == 0
    again, report = allocator.refocus(back, lambda w: by_level(w, {2: 0.9}))  # refocus 3: collapsed at 2
    assert again == back and report.rejected_cooldown == 1
    assert allocator.refocus(again, lambda w: by_level(w, {2: 0.9}))[0] == expanded  # refocus 4


def test_zero_cooldown_allows_flipping_back_within_one_refocus() -> None:
    wc = wc_of(EXAMPLE, 4, 22)

    def flip_flop() -> Callable[[WorkingContext], np.ndarray]:
        rounds = iter([{2: 0.9}, {1: -0.9}])
        return lambda w: by_level(w, next(rounds))

    out, report = alloc(cooldown=0, iterations=2, recent_tokens=2).refocus(wc, flip_flop())
    assert out == wc and (report.expands, report.collapses) == (1, 1)
    out, report = alloc(cooldown=1, iterations=2, recent_tokens=2).refocus(wc, flip_flop())
    assert out.entries()[0] == (1, 0) and report.rejected_cooldown == 1


def _last_flip(tracker: CooldownTracker, level: int, index: int) -> int | None:
    """Refocus number of the node's last remembered flip (the tracker's ``state_dict``), or None."""
    state = tracker.state_dict()
    key = int(node_keys(np.array([level]), np.array([index]))[0])
    at = int(np.searchsorted(state["keys"], key))
    if at < state["keys"].size and int(state["keys"][at]) == key:
        return int(state["last"][at])
    return None


def test_cooldown_tracker_boundaries() -> None:
    tracker = CooldownTracker(2)
    tracker.record(np.array([1, 2]), np.array([5, 0]), now=3)
    levels, indices = np.array([1, 2, 1]), np.array([5, 0, 4])
    assert tracker.blocked(levels, indices, now=3).tolist() == [True, True, False]
    assert tracker.blocked(levels, indices, now=4).tolist() == [True, True, False]
    assert tracker.blocked(levels, indices, now=5).tolist() == [False, False, False]
    tracker.record(np.array([1]), np.array([5]), now=4)  # a later flip replaces the earlier one
    assert _last_flip(tracker, 1, 5) == 4 and _last_flip(tracker, 2, 0) == 3 and _last_flip(tracker, 1, 4) is None
    tracker.prune(next_refocus=5)  # (2, 0) can block nothing from refocus 5 on
    assert len(tracker) == 1 and tracker.blocked(levels, indices, now=5).tolist() == [True, False, False]
    assert not CooldownTracker(0).blocked(levels, indices, now=0).any()


def test_cooldown_memory_is_pruned() -> None:
    allocator = alloc(cooldown=2)
    wc = WorkingContext.raw(64, 2)
    for _ in range(6):
        wc, _ = allocator.refocus(wc, lambda w: np.full(len(w), -0.9, dtype=np.float32))
    assert len(allocator.cooldown_tracker) <= 2 * allocator.config.max_replacements


# ---------------------------------------------------------------- stochastic greedy
def big_case(seed: int = 0) -> tuple[WorkingContext, np.ndarray]:
    """A WC of <= 200 entries and utilities for it (``[:len(wc)]``; 400 values, the budget used below)."""
    wc = WorkingContext.recency(4096, budget=200, block_size=4, recent_tokens=16)
    utilities = np.random.default_rng(seed).uniform(-1, 1, 400).astype(np.float32)
    return wc, utilities


def stochastic(seed: int, **kwargs: object) -> FocusAllocator:
    return alloc(type="stochastic_greedy", budget=400, seed=seed, recent_tokens=16, **kwargs)


def test_stochastic_greedy_is_reproducible_and_seed_dependent() -> None:
    wc, utilities = big_case()
    runs = {}
    for seed in (0, 0, 1, 2):
        allocator = stochastic(seed, sample_top_k=16, max_replacements=4, sample_temperature=1.0)
        out = wc
        for _ in range(3):
            out, _ = allocator.refocus(out, lambda w: utilities[: len(w)])
        runs.setdefault(seed, []).append(out.entries())
    assert runs[0][0] == runs[0][1]
    assert len({tuple(r[0]) for r in runs.values()}) > 1


def test_stochastic_greedy_with_top_1_is_greedy() -> None:
    wc, utilities = big_case(3)
    greedy = alloc(budget=400, recent_tokens=16, max_replacements=1).plan(wc, utilities[: len(wc)])
    sampled = stochastic(5, sample_top_k=1, max_replacements=1).plan(wc, utilities[: len(wc)])
    assert greedy.num_edits == 1
    assert greedy.expand.tolist() == sampled.expand.tolist()
    assert greedy.collapse.tolist() == sampled.collapse.tolist()


def test_low_temperature_follows_the_ranking() -> None:
    wc, utilities = big_case(4)
    greedy = alloc(budget=400, recent_tokens=16, max_replacements=3).plan(wc, utilities[: len(wc)])
    cold = stochastic(9, sample_top_k=8, sample_temperature=1e-6, max_replacements=3).plan(wc, utilities[: len(wc)])
    assert greedy.expand.tolist() == cold.expand.tolist() and greedy.collapse.tolist() == cold.collapse.tolist()


def test_state_dict_resumes_exactly() -> None:
    wc, utilities = big_case(6)
    scorer = lambda w: utilities[: len(w)]  # noqa: E731
    first = stochastic(7, cooldown=3, sample_top_k=12)
    wc1, _ = first.refocus(wc, scorer)
    state = first.state_dict()
    second = stochastic(7, cooldown=3, sample_top_k=12)
    second.load_state_dict(state)
    a, _ = first.refocus(wc1, scorer)
    b, _ = second.refocus(wc1, scorer)
    assert a == b and first.refocus_count == second.refocus_count == 2
    first.reset()
    assert first.refocus_count == 0 and len(first.cooldown_tracker) == 0


def test_the_default_allocator_drills_into_the_best_gist_before_opening_the_next() -> None:
    # K = 2, 16 tokens: two level-2 gists [0, 4) and [4, 8) both worth opening (0.5 and 0.3), then a raw
    # tail. The budget holds two expansions. Under the product's defaults (one edit per round, rounds
    # re-scored) the best gist is opened and then its best child, down to raw tokens; eight edits in
    # one round would open both level-2 gists and leave the budget spent above the tokens that matter.
    from megacontext_plugin.config import MCConfig

    cfg = MCConfig()
    wc = WorkingContext.from_entries([2, 2, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 8, 9, 10, 11, 12, 13, 14, 15], 2, 16)

    def scorer(w: WorkingContext) -> np.ndarray:
        # the tokens that matter are 2-3: every gist covering them scores 0.5; the other level-2 gist 0.3
        holds = (w.starts <= 2) & (w.ends >= 4) & (w.levels > 0)
        other = (w.levels == 2) & (w.starts == 4)
        return np.where(holds, 0.5, np.where(other, 0.3, 0.0)).astype(np.float32)

    drilled, _ = alloc(budget=len(wc) + 2, max_replacements=cfg.allocator_max_replacements,
                       iterations=cfg.allocator_iterations).refocus(wc, scorer)
    assert drilled.entries()[:4] == [(1, 0), (0, 2), (0, 3), (2, 1)]
    spread, _ = alloc(budget=len(wc) + 2, max_replacements=8, iterations=1).refocus(wc, scorer)
    assert spread.entries()[:4] == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_an_open_island_is_read_against_the_typical_gist_not_closed_for_low_absolute_scores() -> None:
    # K = 2, 12 tokens: level-1 gists over [0, 2) and [2, 4), a raw island [4, 6), a gist over [6, 8),
    # the protected tail [8, 12). This run's LensNet scores everything low: the gists -0.6, the island
    # -0.35. Read absolutely the island would close (below -0.3); relative to the median gist it
    # stands 0.25 above, and nothing closes. The edits do not depend on the level of the scores.
    from megacontext_plugin.focus import score_through_view

    wc = WorkingContext.from_entries([1, 1, 0, 0, 1, 0, 0, 0, 0], [0, 1, 4, 5, 3, 8, 9, 10, 11], 2, 12)

    def lens(level: float) -> Callable[[WorkingContext], np.ndarray]:
        return lambda w: np.where(w.levels > 0, -0.6, np.where(w.starts < 8, -0.35, 0.0)).astype(np.float32) + level

    for level in (0.0, 0.5, -0.3):
        out, report = alloc(recent_tokens=4, collapse_threshold=0.3, expand_threshold=0.1).refocus(
            wc, score_through_view(lens(level), 1))
        assert out.entries() == wc.entries() and report.collapses == 0
    absolute, report = alloc(recent_tokens=4, collapse_threshold=0.3).refocus(wc, lens(0.0))
    assert (1, 2) in absolute.entries()  # read absolutely, the island [4, 6) closes
