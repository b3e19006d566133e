"""Property tests: every legal edit keeps every working-context invariant.

The vectorised code is checked against plain-Python references written from the definitions
(token coverage, candidate rules, the greedy shortest tiling).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_working_context import FakeTree, expected_vectors

from megacontext_plugin.context import EntryRows, TreeSource, WorkingContext, WorkingContextError, model_inputs

SETTINGS = settings(max_examples=120, deadline=None)


# ---------------------------------------------------------------- strategies and references
def max_level_at(start: int, limit: int, block_size: int) -> int:
    """Largest level of an aligned node starting at ``start`` and ending at or before ``limit``."""
    level = 0
    while start % block_size ** (level + 1) == 0 and start + block_size ** (level + 1) <= limit:
        level += 1
    return level


@st.composite
def legal_wcs(draw: st.DrawFn, max_tokens: int = 160, block_sizes: tuple[int, ...] = (2, 3, 4)):
    """``(wc, recent_tokens)``: any legal tiling (random level choices, raw protected tail)."""
    K = draw(st.sampled_from(block_sizes))
    N = draw(st.integers(0, max_tokens))
    R = draw(st.integers(0, N))
    picks = draw(st.lists(st.integers(0, 5), max_size=max_tokens))
    default = draw(st.integers(0, 3))  # the level wanted once ``picks`` runs out
    levels: list[int] = []
    indices: list[int] = []
    start, protected_start = 0, N - R
    for step in range(N):
        if start >= N:
            break
        limit = protected_start if start < protected_start else start + 1
        pick = picks[step] if step < len(picks) else default
        level = min(pick, max_level_at(start, limit, K)) if start < protected_start else 0
        levels.append(level)
        indices.append(start // K**level)
        start += K**level
    return WorkingContext.from_entries(np.array(levels, dtype=np.int64), indices, K, N), R


def coverage(wc: WorkingContext) -> list[tuple[int, int]]:
    """For every token, the ``(level, index)`` of the entry covering it."""
    out: list[tuple[int, int]] = []
    for level, index in wc.entries():
        out.extend([(level, index)] * wc.block_size**level)
    return out


def ref_expandable(wc: WorkingContext, recent: int) -> list[bool]:
    K, N = wc.block_size, wc.num_tokens
    return [lv > 0 and (ix + 1) * K**lv <= N - min(recent, N) for lv, ix in wc.entries()]


def ref_collapsible(wc: WorkingContext, recent: int, max_level: int | None) -> list[int]:
    K, N = wc.block_size, wc.num_tokens
    entries = wc.entries()
    out = []
    for p in range(len(entries) - K + 1):
        level, first = entries[p]
        group = entries[p : p + K]
        siblings = all(g == (level, first + j) for j, g in enumerate(group)) and first % K == 0
        parent_end = (first // K + 1) * K ** (level + 1)
        allowed = max_level is None or level + 1 <= max_level
        if siblings and allowed and parent_end <= N - min(recent, N):
            out.append(p)
    return out


def greedy_tiling(split: int, block_size: int, top: int) -> list[tuple[int, int]]:
    """Greedy old-to-new tiling of ``[0, split)`` by the largest aligned nodes of level <= ``top``."""
    entries, start = [], 0
    while start < split:
        level = min(top, max_level_at(start, split, block_size))
        entries.append((level, start // block_size**level))
        start += block_size**level
    return entries


def subset(draw: st.DrawFn, values: np.ndarray) -> np.ndarray:
    mask = draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    return values[np.array(mask, dtype=bool)] if len(values) else values


# ---------------------------------------------------------------- properties
@SETTINGS
@given(legal_wcs())
def test_generated_contexts_are_legal_and_spans_match(case: tuple[WorkingContext, int]) -> None:
    wc, recent = case
    wc.validate(recent_tokens=recent, budget=len(wc))
    K = wc.block_size
    assert wc.starts.tolist() == [ix * K**lv for lv, ix in wc.entries()]
    assert wc.ends.tolist() == [(ix + 1) * K**lv for lv, ix in wc.entries()]
    assert len(coverage(wc)) == wc.num_tokens
    assert WorkingContext.from_entries(wc.levels, wc.indices, K, wc.num_tokens) == wc


@SETTINGS
@given(legal_wcs(), st.none() | st.integers(1, 4))
def test_candidates_match_reference(case: tuple[WorkingContext, int], max_level: int | None) -> None:
    wc, recent = case
    assert wc.expandable_mask(recent).tolist() == ref_expandable(wc, recent)
    assert wc.collapsible_starts(recent, max_level).tolist() == ref_collapsible(wc, recent, max_level)


@SETTINGS
@given(st.data())
def test_random_edit_sequences_keep_invariants(data: st.DataObject) -> None:
    wc, recent = data.draw(legal_wcs())
    K = wc.block_size
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["expand", "collapse", "edit", "append"]))
        before = coverage(wc)
        if op == "append":
            n = data.draw(st.integers(0, 9))
            new = wc.append(n)
            assert coverage(new) == before + [(0, t) for t in range(wc.num_tokens, wc.num_tokens + n)]
        else:
            exp = subset(data.draw, np.flatnonzero(wc.expandable_mask(recent))) if op != "collapse" else None
            col = subset(data.draw, wc.collapsible_starts(recent)) if op != "expand" else None
            if exp is not None and col is not None and len(col):  # drop expansions inside collapsed groups
                inside = (exp[:, None] >= col[None, :]) & (exp[:, None] < col[None, :] + K)
                exp = exp[~inside.any(axis=1)]
            if op == "expand":
                new = wc.expand(exp)
            elif op == "collapse":
                new = wc.collapse(col, recent_tokens=recent)
            else:
                new = wc.edit(expand=exp, collapse=col, recent_tokens=recent)
            expected = list(before)
            starts = wc.starts
            for p in [] if exp is None else exp.tolist():
                level = int(wc.levels[p])
                for t in range(int(starts[p]), int(wc.ends[p])):
                    expected[t] = (level - 1, t // K ** (level - 1))
            for p in [] if col is None else col.tolist():
                level = int(wc.levels[p]) + 1
                for t in range(int(starts[p]), int(starts[p]) + K**level):
                    expected[t] = (level, t // K**level)
            assert coverage(new) == expected
            n_exp = 0 if exp is None else len(exp)
            n_col = 0 if col is None else len(col)
            assert len(new) == len(wc) + (K - 1) * (n_exp - n_col)
        new.validate(recent_tokens=recent)
        wc = new


@SETTINGS
@given(st.data())
def test_expand_then_collapse_round_trips(data: st.DataObject) -> None:
    wc, recent = data.draw(legal_wcs())
    K = wc.block_size
    exp = subset(data.draw, np.flatnonzero(wc.expandable_mask(recent)))
    expanded = wc.expand(exp)
    child_starts = exp + (K - 1) * np.arange(len(exp))  # where each expanded entry's children begin
    assert expanded.collapse(child_starts, recent_tokens=recent) == wc


@SETTINGS
@given(st.data())
def test_collapse_then_expand_round_trips(data: st.DataObject) -> None:
    wc, recent = data.draw(legal_wcs())
    K = wc.block_size
    col = subset(data.draw, wc.collapsible_starts(recent))
    collapsed = wc.collapse(col, recent_tokens=recent)
    parents = col - (K - 1) * np.arange(len(col))
    assert collapsed.expand(parents) == wc


@SETTINGS
@given(st.data())
def test_illegal_edits_are_refused(data: st.DataObject) -> None:
    wc, recent = data.draw(legal_wcs())
    if len(wc) == 0:
        return
    position = data.draw(st.integers(0, len(wc) - 1))
    if position not in set(wc.collapsible_starts(recent).tolist()):
        with pytest.raises(WorkingContextError):
            wc.collapse([position], recent_tokens=recent)
    if wc.levels[position] == 0:
        with pytest.raises(WorkingContextError):
            wc.expand([position])


@SETTINGS
@given(
    st.sampled_from([2, 3, 4]),
    st.integers(0, 300),
    st.integers(0, 60),
    st.integers(0, 40),
    st.none() | st.integers(1, 3),
)
def test_recency_is_legal_and_shortest_fitting(
    block_size: int, num_tokens: int, budget: int, recent: int, max_level: int | None
) -> None:
    K, N = block_size, num_tokens
    protected_start = N - min(recent, N)
    top = 99 if max_level is None else max_level
    fitting = [s for s in range(protected_start + 1) if len(greedy_tiling(s, K, top)) + N - s <= budget]
    if not fitting:
        with pytest.raises(WorkingContextError, match="too small"):
            WorkingContext.recency(N, budget, K, recent_tokens=recent, max_level=max_level)
        return
    wc = WorkingContext.recency(N, budget, K, recent_tokens=recent, max_level=max_level)
    split = min(fitting)  # the longest raw suffix that fits
    assert wc.entries() == greedy_tiling(split, K, top) + [(0, t) for t in range(split, N)]
    wc.validate(recent_tokens=recent, budget=budget, max_level=max_level)
    levels = wc.levels.tolist()
    assert levels == sorted(levels, reverse=True)  # coarse (old) to fine (new)


@SETTINGS
@given(st.lists(legal_wcs(max_tokens=80, block_sizes=(4,)), min_size=1, max_size=4))
def test_model_inputs_match_tree_vectors(cases: list[tuple[WorkingContext, int]]) -> None:
    wcs = [wc for wc, _ in cases]
    tree = FakeTree(4, max(wc.num_tokens for wc in wcs))
    rows = EntryRows.of(wcs)
    batch = model_inputs(TreeSource(tree), rows, scheme="ordinal", sigma_scale=0.0, head_dim=4, sequence_len=4096,
                         rotary_dtype=torch.float32)
    for row, wc in enumerate(wcs):
        n = len(wc)
        torch.testing.assert_close(batch.inputs_RWD[row, :n], expected_vectors(wc), rtol=0, atol=0)
        assert not batch.inputs_RWD[row, n:].any()
        assert rows.valid_RW[row].sum() == n
        assert rows.starts_RW[row, :n].tolist() == wc.starts.tolist()
        assert rows.levels_RW[row, :n].tolist() == wc.levels.tolist()
        assert ((batch.value_ids_RW[row] >= 0).numpy() == (rows.levels_RW[row] == 0)).all()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.integers(0, 3000), st.integers(0, 64))
def test_the_coarsest_layout_is_legal_and_is_where_refocus_starts(K: int, n: int, recent: int) -> None:
    from megacontext_plugin.focus import start_layout

    coarsest = WorkingContext.coarsest(n, K, recent)
    coarsest.validate(recent_tokens=min(recent, n))
    assert start_layout(n, K, recent) == coarsest


def _leaves_room_to_drill(n: int, K: int, tail: int, room: int) -> bool:
    wc = WorkingContext.coarsest(n, K, tail)
    return len(wc) + int(wc.levels.max(initial=0)) * (K - 1) <= room


@settings(max_examples=120, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.integers(0, 5000), st.sampled_from([0, 3, 8, 16, 32, 64]), st.integers(1, 128))
def test_a_fitted_tail_halves_only_while_the_coarsest_layout_leaves_no_room_to_drill(
        K: int, n: int, tail: int, room: int) -> None:
    from megacontext_plugin.focus import fitted_tail

    got = fitted_tail(n, K, tail, room)
    halvings = 0
    while tail >> halvings > got:
        halvings += 1
    assert got == tail >> halvings  # the run's tail, halved some number of times
    assert got >= min(tail, K)  # never below one block (a shorter tail than a block is kept as it is)
    for k in range(halvings):  # every tail it gave up left no room for one island from the top level
        assert not _leaves_room_to_drill(n, K, tail >> k, room)
    if got // 2 >= K:  # it could have halved again: it stopped because this one leaves the room
        assert _leaves_room_to_drill(n, K, got, room)
