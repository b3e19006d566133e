"""Property tests: the vectorised allocator equals a plain-Python reference of its rules, and
refocusing keeps the budget, the protected tail, the thresholds and the cooldown."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_working_context_properties import legal_wcs, ref_collapsible

from megacontext_plugin.context import WorkingContext
from megacontext_plugin.focus import CooldownTracker, FocusAllocator, FocusConfig, select_edits
from megacontext_plugin.focus.selection import context_edits

SETTINGS = settings(max_examples=300, deadline=None)

Node = tuple[int, int]
Candidate = tuple[str, int, float, set[int]]
"""(kind "E" or "C", WC position, score, entries it touches)"""


@st.composite
def dyadic_utilities(draw: st.DrawFn, length: int) -> np.ndarray:
    """Utilities in [-1, 1] on a 1/16 grid (exact float sums, many ties: tie-breaks get tested),
    shifted by a drawn bias so that sibling groups with a negative mean often hold positive members
    (conflicts between expansions and collapses)."""
    bias = draw(st.sampled_from([-8, -4, 0, 4]))
    values = draw(st.lists(st.integers(-16, 16), min_size=length, max_size=length))
    return np.clip(np.asarray(values, dtype=np.float32) + bias, -16, 16) / 16


@st.composite
def configs(draw: st.DrawFn, length: int, recent: int, **fixed: object) -> FocusConfig:
    budget = draw(st.integers(max(1, length - 6), length + 12))
    kwargs: dict[str, object] = {
        "budget": budget,
        "expand_threshold": draw(st.sampled_from([0.0, 0.125, 0.5])),
        "collapse_threshold": draw(st.sampled_from([0.0, 0.125, 0.5])),
        "max_replacements": draw(st.integers(1, 6)),
        "soft_max_length": draw(st.none() | st.integers(max(1, min(budget, length - 3)), budget)),
        "recent_tokens": recent,
        "max_level": draw(st.none() | st.integers(1, 3)),
        **fixed,
    }
    return FocusConfig(**kwargs)  # type: ignore[arg-type]


def reference_ranking(
    wc: WorkingContext, u: np.ndarray, cfg: FocusConfig, blocked: Callable[[int, int], bool]
) -> list[Candidate]:
    """Candidates ``(kind, position, score, entries)`` in rank order, from the documented rules."""
    K, N, W = wc.block_size, wc.num_tokens, len(wc)
    tail_start = N - min(cfg.recent_tokens, N)
    entries = wc.entries()
    candidates: list[Candidate] = []
    for i, (level, index) in enumerate(entries):
        end = (index + 1) * K**level
        if level > 0 and end <= tail_start and float(u[i]) > cfg.expand_threshold and not blocked(level, index):
            candidates.append(("E", i, float(u[i]), {i}))
    for p in ref_collapsible(wc, cfg.recent_tokens, cfg.max_level):
        mean = float(np.mean(u[p : p + K].astype(np.float64)))
        level, index = entries[p]
        if mean < -cfg.collapse_threshold and not blocked(level + 1, index // K):
            candidates.append(("C", p, float(np.float32(-mean)), set(range(p, p + K))))
    collapse_first = cfg.target_length < W
    return sorted(candidates, key=lambda c: (collapse_first and c[0] == "E", -c[2], c[0] == "C", c[1]))


def reference_stochastic_order(
    ranking: list[Candidate], wc: WorkingContext, cfg: FocusConfig, rng: np.random.Generator
) -> list[Candidate]:
    """The top ``k`` reordered by Gumbel keys ``score / T + G`` (best first), the rest unchanged."""
    head = ranking[: cfg.sample_top_k]
    keys = [c[2] / cfg.sample_temperature + g for c, g in zip(head, rng.gumbel(size=len(head)), strict=True)]
    collapse_first = cfg.target_length < len(wc)
    order = sorted(range(len(head)), key=lambda i: (collapse_first and head[i][0] == "E", -keys[i]))
    return [head[i] for i in order] + ranking[len(head) :]


def reference_select(
    wc: WorkingContext, u: np.ndarray, cfg: FocusConfig, ranking: list[Candidate]
) -> tuple[list[int], list[int]]:
    """Greedy, one candidate at a time: drop what overlaps a better-ranked survivor, then take
    survivors in order while the edit count and the budget allow."""
    K, W = wc.block_size, len(wc)
    survivors: list[Candidate] = []
    for cand in ranking:
        if not any(cand[3] & kept[3] for kept in survivors):
            survivors.append(cand)
    taken: list[Candidate] = []
    net = 0
    for cand in survivors:
        if len(taken) == cfg.max_replacements:
            break
        if cand[0] == "E":
            if W + (K - 1) * (net + 1) > cfg.budget:
                continue
            net += 1
        else:
            net -= 1
        taken.append(cand)
    return sorted(c[1] for c in taken if c[0] == "E"), sorted(c[1] for c in taken if c[0] == "C")


@st.composite
def cases(draw: st.DrawFn, **fixed: object) -> tuple[WorkingContext, np.ndarray, FocusConfig]:
    wc, recent = draw(legal_wcs(max_tokens=120))
    u = draw(dyadic_utilities(len(wc)))
    return wc, u, draw(configs(len(wc), recent, **fixed))


@st.composite
def gist_cases(draw: st.DrawFn) -> tuple[WorkingContext, np.ndarray, FocusConfig]:
    """Runs of sibling gists before a raw tail: expansions and collapses compete for the same entries."""
    K = draw(st.sampled_from([2, 3, 4]))
    gists, recent = draw(st.integers(1, 24)), draw(st.integers(0, 5))
    levels = [1] * gists + [0] * recent
    indices = list(range(gists)) + list(range(gists * K, gists * K + recent))
    wc = WorkingContext.from_entries(levels, indices, K, gists * K + recent)
    u = draw(dyadic_utilities(len(wc)))
    return wc, u, draw(configs(len(wc), recent))


@SETTINGS
@given(st.one_of(cases(), gist_cases()), st.data())
def test_greedy_matches_the_reference(
    case: tuple[WorkingContext, np.ndarray, FocusConfig], data: st.DataObject
) -> None:
    wc, u, cfg = case
    cooldown = data.draw(st.integers(0, 3))
    now = data.draw(st.integers(0, 3))
    tracker = CooldownTracker(cooldown)
    flipped: dict[Node, int] = {}
    gists = [(lv, ix) for lv, ix in wc.entries() if lv > 0]
    parents = [(lv + 1, ix // wc.block_size) for lv, ix in wc.entries()]
    for node in data.draw(st.lists(st.sampled_from(gists + parents), max_size=6)) if wc.num_tokens else []:
        when = data.draw(st.integers(0, now))
        tracker.record(np.array([node[0]]), np.array([node[1]]), when)
        flipped[node] = when

    def blocked(level: int, index: int) -> bool:
        return (level, index) in flipped and now - flipped[(level, index)] < cooldown

    plan = select_edits(wc, u, cfg, tracker, now)
    expected_e, expected_c = reference_select(wc, u, cfg, reference_ranking(wc, u, cfg, blocked))
    assert plan.expand.tolist() == expected_e
    assert plan.collapse.tolist() == expected_c


@SETTINGS
@given(cases(), st.sampled_from(["greedy", "stochastic_greedy"]))
def test_chosen_edits_obey_the_rules(case: tuple[WorkingContext, np.ndarray, FocusConfig], kind: str) -> None:
    wc, u, cfg = case
    cfg = dataclasses.replace(cfg, type=kind, sample_top_k=3)
    K, N = wc.block_size, wc.num_tokens
    plan = FocusAllocator(cfg).plan(wc, u)
    assert plan.num_edits <= cfg.max_replacements
    tail_start = N - min(cfg.recent_tokens, N)
    for p in plan.expand.tolist():
        assert wc.levels[p] > 0 and u[p] > cfg.expand_threshold and wc.ends[p] <= tail_start
    for p in plan.collapse.tolist():
        assert np.mean(u[p : p + K].astype(np.float64)) < -cfg.collapse_threshold
    new = wc.edit(plan.expand, plan.collapse, recent_tokens=cfg.recent_tokens, max_level=cfg.max_level)
    new.validate(recent_tokens=cfg.recent_tokens)
    if len(wc) <= cfg.budget:
        assert len(new) <= cfg.budget
    else:
        assert len(new) <= len(wc)  # over budget (e.g. after an append): never longer


@SETTINGS
@given(
    st.one_of(cases(), gist_cases()),
    st.integers(1, 6),
    st.sampled_from([0.25, 1.0]),
    st.integers(0, 2**16),
)
def test_stochastic_greedy_matches_the_reference(
    case: tuple[WorkingContext, np.ndarray, FocusConfig], top_k: int, temperature: float, seed: int
) -> None:
    wc, u, cfg = case
    cfg = dataclasses.replace(
        cfg, type="stochastic_greedy", sample_top_k=top_k, sample_temperature=temperature, seed=seed
    )
    plan = FocusAllocator(cfg).plan(wc, u)
    ranking = reference_ranking(wc, u, cfg, lambda lv, ix: False)
    order = reference_stochastic_order(ranking, wc, cfg, np.random.default_rng(seed))
    assert (plan.expand.tolist(), plan.collapse.tolist()) == reference_select(wc, u, cfg, order)


def flips_between(before: WorkingContext, after: WorkingContext) -> set[Node]:
    """Nodes flipped by one round of simultaneous edits: expanded gists and parents made by collapses."""
    K = before.block_size
    old, new = set(before.entries()), set(after.entries())
    expanded = {(lv, ix) for lv, ix in old - new if lv > 0 and (lv - 1, ix * K) in new}
    collapsed = {(lv, ix) for lv, ix in new - old if lv > 0 and (lv - 1, ix * K) in old}
    return expanded | collapsed


@settings(max_examples=60, deadline=None)
@given(legal_wcs(max_tokens=120), st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(4, 10), st.data())
def test_refocus_sequences_keep_budget_tail_and_cooldown(
    case: tuple[WorkingContext, int], cooldown: int, seed: int, refocuses: int, data: st.DataObject
) -> None:
    wc, recent = case
    cfg = data.draw(configs(len(wc), recent, cooldown=cooldown, iterations=1,
                            expand_neighbours=data.draw(st.integers(0, 2))))
    kind = data.draw(st.sampled_from(["greedy", "stochastic_greedy"]))
    allocator = FocusAllocator(dataclasses.replace(cfg, type=kind, seed=seed % 1000))
    rng = np.random.default_rng(seed)
    last_flip: dict[Node, int] = {}
    for r in range(refocuses):
        new, report = allocator.refocus(wc, lambda w: np.round(rng.uniform(-1, 1, len(w)) * 16) / 16)
        new.validate(recent_tokens=recent)
        assert new.entries()[len(new) - min(recent, len(new)) :] == wc.entries()[len(wc) - min(recent, len(wc)) :]
        assert len(new) <= max(cfg.budget, len(wc))
        assert report.expands - report.context_expands + report.collapses <= cfg.max_replacements
        assert report.context_expands <= cfg.expand_neighbours * report.expands
        for node in flips_between(wc, new):
            if node in last_flip:
                assert r - last_flip[node] >= cooldown, f"{node} flipped at {last_flip[node]} and again at {r}"
            last_flip[node] = r
        wc = new


def reference_context_pass(wc: WorkingContext, anchors: list[tuple[int, float]], cfg: FocusConfig,
                           blocked: Callable[[int, int], bool]) -> list[int]:
    """The context pass from its documented rules: per anchor (a level-1 node index and its
    utility), the level-1 gists ``a-1, a-2, ...`` while they are entries (at most
    ``expand_neighbours``); nearest first, then best anchor, then older; a gist
    claimed twice keeps its best rank; cooldown; as many as the budget holds."""
    K, W = wc.block_size, len(wc)
    position = {node: i for i, node in enumerate(wc.entries())}
    claims: list[tuple[int, float, int]] = []
    for a, v in anchors:
        for d in range(1, cfg.expand_neighbours + 1):
            p = position.get((1, a - d))
            if p is None:
                break
            claims.append((d, -v, p))
    seen: set[int] = set()
    ranked = []
    for _, _, p in sorted(claims):
        if p not in seen:
            seen.add(p)
            ranked.append(p)
    free = [p for p in ranked if not blocked(*wc.entries()[p])]
    return sorted(free[: max(0, (cfg.budget - W) // (K - 1))])


@SETTINGS
@given(st.one_of(cases(), gist_cases()), st.integers(1, 3), st.data())
def test_context_pass_matches_the_reference(
    case: tuple[WorkingContext, np.ndarray, FocusConfig], neighbours: int, data: st.DataObject
) -> None:
    wc, _, cfg = case
    cfg = dataclasses.replace(cfg, expand_neighbours=neighbours)
    K = wc.block_size
    top = max(1, wc.num_tokens // K + 1)
    anchors = data.draw(st.lists(st.tuples(st.integers(0, top), st.sampled_from([0.25, 0.5, 1.0])), max_size=5))
    tracker = CooldownTracker(2)
    flipped = set(data.draw(st.lists(st.sampled_from([(1, i) for i in range(top)]), max_size=3)))
    for lv, ix in flipped:
        tracker.record(np.array([lv]), np.array([ix]), 0)
    plan = context_edits(wc, np.array([a for a, _ in anchors], dtype=np.int64),
                         np.array([v for _, v in anchors], dtype=np.float32), cfg, tracker, 1)
    assert plan.collapse.size == 0
    assert plan.expand.tolist() == reference_context_pass(wc, anchors, cfg, lambda lv, ix: (lv, ix) in flipped)
    new = wc.edit(plan.expand, plan.collapse, recent_tokens=cfg.recent_tokens)
    new.validate(recent_tokens=cfg.recent_tokens)
    assert len(new) <= max(cfg.budget, len(wc))


@settings(max_examples=200, deadline=None)
@given(legal_wcs(max_tokens=300), st.integers(1, 4), st.data())
def test_lens_view_has_no_gist_above_the_level_and_pools_each_entry_to_its_best_descendant(
    case: tuple[WorkingContext, int], level: int, data: st.DataObject
) -> None:
    from megacontext_plugin.focus import lens_view, pool_view

    wc, recent = case
    view = lens_view(wc, level)
    view.validate(recent_tokens=recent)  # the same tokens, tiled in order, the tail untouched
    assert int(view.levels.max(initial=0)) <= max(level, int(wc.levels[wc.levels <= level].max(initial=0)))
    gist_levels = wc.levels[wc.levels > 0]
    lone = gist_levels.size == 1 and 1 < int(gist_levels[0]) <= level  # opened to give the view a median (D44)
    kept = {e for e in wc.entries() if e[0] <= level and not (lone and e[0] > 0)}
    assert kept <= set(view.entries())  # entries at or below the level are left as they are
    if lone:
        assert int((view.levels > 0).sum()) >= 2 or int(view.levels.max(initial=0)) <= 1
    u_view = np.asarray(data.draw(st.lists(st.integers(-16, 16), min_size=len(view), max_size=len(view))),
                        dtype=np.float32) / 16
    pooled = pool_view(wc, view, u_view)
    best = []
    for i in range(len(wc)):  # plain reference: the best view entry inside each entry's span
        inside = (view.starts >= wc.starts[i]) & (view.ends <= wc.ends[i])
        best.append(float(u_view[inside].max()))
    gists = [b for b, lv in zip(best, wc.levels, strict=True) if lv > 0]
    if len(gists) < 2 and view is not wc:  # a lone gist: read against the median of the view's gists (D44)
        gists = [float(u) for u, lv in zip(u_view, view.levels, strict=True) if lv > 0]
    median = float(np.median(np.asarray(gists, dtype=np.float32))) if gists else 0.0
    for b, got in zip(best, pooled, strict=True):  # every entry relative to the median gist (D31, D33)
        want = min(1.0, max(-1.0, b - median)) if gists else b
        assert abs(float(got) - want) < 1e-6
    shifted = pool_view(wc, view, u_view + np.float32(0.25))
    # away from the clip, and once there is a median to read against, a uniform shift changes no entry
    inner = (np.abs(pooled) < 0.7) & bool(gists)
    assert np.allclose(shifted[inner], pooled[inner], atol=1e-6)
    lone_any = gist_levels.size == 1 and int(gist_levels[0]) > 1
    assert (lens_view(wc, None) is wc) != lone_any  # only a lone gist is opened when no level is known


def test_a_lone_gist_is_read_against_its_children() -> None:
    """One gist over most of the history and raw tokens after it (a history just past a tree level's
    width): LensNet scores its children and the gist gets its best child's lead over their median,
    so a child that stands out can open it; read against itself it would always be 0 (D44)."""
    from megacontext_plugin.focus import score_through_view

    # K = 2, 10 tokens: a level-3 gist over [0, 8) and two raw tokens; LensNet knows level 3
    wc = WorkingContext.from_entries([3, 0, 0], [0, 8, 9], 2, 10)
    seen: list[list[tuple[int, int]]] = []

    def lens(w: WorkingContext) -> np.ndarray:
        seen.append(w.entries())
        return np.array([0.5, 0.1, -0.3, -0.2], dtype=np.float32)[: len(w)]

    u = score_through_view(lens, 3)(wc)
    assert seen == [[(2, 0), (2, 1), (0, 8), (0, 9)]]  # opened once: two gists to compare
    assert np.allclose(u, [0.2, -0.6, -0.5])  # the median of the two children is 0.3


def test_a_coarse_gist_is_scored_by_its_best_child() -> None:
    from megacontext_plugin.focus import score_through_view

    # K = 2, 12 tokens: a level-3 gist over [0, 8), a level-1 gist over [8, 10), two raw tokens;
    # LensNet knows level 1. The level-3 gist gets its best child's 0.7; then both gists are read
    # relative to their median (0.3): 0.4 and -0.4; the raw entries too: -0.25 and -0.3.
    wc = WorkingContext.from_entries([3, 1, 0, 0], [0, 4, 10, 11], 2, 12)
    seen: list[list[tuple[int, int]]] = []

    def lens(w: WorkingContext) -> np.ndarray:
        seen.append(w.entries())
        return np.array([0.1, 0.7, -0.2, 0.3, -0.1, 0.05, 0.0], dtype=np.float32)[: len(w)]

    u = score_through_view(lens, 1)(wc)
    assert seen == [[(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (0, 10), (0, 11)]]
    assert np.allclose(u, [0.4, -0.4, -0.25, -0.3])
