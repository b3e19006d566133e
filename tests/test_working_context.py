"""Working context: constructors, validation, edits, candidates and materialisation (examples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megacontext_plugin.context import (
    PAD_LEVEL,
    EntryRows,
    TreeSource,
    WorkingContext,
    WorkingContextError,
    entry_positions,
    model_inputs,
)


class FakeTree:
    """Minimal ``MCTree`` for tests: node ``(level, index)`` has the vector
    ``[level, index, 1000 * level + index, scale]`` (D = 4) and every call is logged."""

    dim = 4

    def __init__(self, block_size: int, num_tokens: int, scale: float = 1.0, requires_grad: bool = False) -> None:
        self.block_size = block_size
        self._num_tokens = num_tokens
        self.scale = torch.tensor(scale, dtype=torch.float64, requires_grad=requires_grad)
        self.calls: list[tuple[int, int]] = []  # (level, number of indices)

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def token_ids(self, start: int, end: int) -> torch.Tensor:
        assert 0 <= start <= end <= self._num_tokens
        return torch.arange(start, end, dtype=torch.int64) + 100

    def embeddings(self, level: int, indices: torch.Tensor) -> torch.Tensor:
        assert indices.dtype == torch.int64
        assert bool((indices < self._num_tokens // self.block_size**level).all()), "node not in the tree"
        self.calls.append((level, int(indices.numel())))
        idx = indices.to(torch.float64)
        lvl = torch.full_like(idx, float(level))
        return torch.stack([lvl, idx, 1000.0 * lvl + idx, self.scale.expand_as(idx)], dim=1)


def expected_vectors(wc: WorkingContext, scale: float = 1.0) -> torch.Tensor:
    lv = torch.from_numpy(wc.levels.astype(np.float64))
    ix = torch.from_numpy(wc.indices.astype(np.float64))
    return torch.stack([lv, ix, 1000.0 * lv + ix, torch.full_like(lv, scale)], dim=1)


def wc_of(entries: list[tuple[int, int]], block_size: int, num_tokens: int) -> WorkingContext:
    levels = [lv for lv, _ in entries]
    indices = [ix for _, ix in entries]
    return WorkingContext.from_entries(levels, indices, block_size, num_tokens)


# K = 4, N = 22: one LOD2 node [0, 16), one LOD1 node [16, 20), two raw tokens
EXAMPLE = [(2, 0), (1, 4), (0, 20), (0, 21)]


# ---------------------------------------------------------------- constructors and properties
def test_raw_is_all_lod0() -> None:
    wc = WorkingContext.raw(7, 4)
    assert len(wc) == 7
    assert wc.levels.tolist() == [0] * 7
    assert wc.indices.tolist() == list(range(7))
    starts, ends = wc.spans
    assert starts.tolist() == list(range(7)) and ends.tolist() == list(range(1, 8))
    wc.validate(recent_tokens=7, budget=7)


def test_from_entries_spans_and_dtypes() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    assert wc.starts.tolist() == [0, 16, 20, 21]
    assert wc.ends.tolist() == [16, 20, 21, 22]
    assert wc.levels.dtype == np.int8 and wc.indices.dtype == np.int64
    assert wc.starts.dtype == np.int64 and wc.ends.dtype == np.int64
    assert wc.entries() == EXAMPLE
    assert len(wc) == 4 and wc.num_tokens == 22 and wc.block_size == 4
    wc.validate(recent_tokens=2, budget=4)


def test_arrays_are_read_only_and_inputs_are_copied() -> None:
    levels = np.array([1, 0, 0], dtype=np.int64)
    wc = WorkingContext.from_entries(levels, [0, 2, 3], 2, 4)
    levels[0] = 0
    assert wc.levels[0] == 1
    with pytest.raises(ValueError):
        wc.levels[0] = 0
    with pytest.raises(ValueError):
        wc.ends[0] = 0


def test_empty_history() -> None:
    wc = WorkingContext.raw(0, 4)
    assert len(wc) == 0
    wc.validate(recent_tokens=5, budget=0)
    assert WorkingContext.recency(0, 0, 4).entries() == []
    assert wc.append(3) == WorkingContext.raw(3, 4)


@pytest.mark.parametrize(
    ("entries", "block_size", "num_tokens", "message"),
    [
        ([(0, 1), (0, 2)], 4, 3, "starts at token 1"),
        ([(0, 0), (0, 2)], 4, 3, "gap"),
        ([(0, 0), (0, 0)], 4, 2, "overlap"),
        ([(0, 0), (0, 1), (1, 0), (0, 4)], 4, 5, "overlap"),  # a gist that is not aligned where it sits
        ([(1, 0), (1, 1)], 4, 6, "incomplete node"),
        ([(0, 0), (0, 1)], 4, 3, "has 3 tokens"),
        ([], 4, 2, "empty working context"),
        ([(-1, 0)], 4, 1, "level -1"),
        ([(0, -1)], 4, 1, "negative node index"),
        ([(40, 0)], 4, 1, r"outside \[0, 31\]"),
    ],
)
def test_illegal_tilings_are_rejected(
    entries: list[tuple[int, int]], block_size: int, num_tokens: int, message: str
) -> None:
    with pytest.raises(WorkingContextError, match=message):
        wc_of(entries, block_size, num_tokens)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(WorkingContextError, match="block_size"):
        WorkingContext.raw(4, 1)
    with pytest.raises(WorkingContextError, match="num_tokens"):
        WorkingContext.raw(-1, 4)
    with pytest.raises(WorkingContextError, match="one length"):
        WorkingContext.from_entries([0, 0], [0], 4, 2)
    with pytest.raises(WorkingContextError, match="integers"):
        WorkingContext.from_entries(np.array([0.0]), [0], 4, 1)


def test_validate_tail_budget_and_max_level() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    wc.validate(recent_tokens=2, budget=4, max_level=2)
    with pytest.raises(WorkingContextError, match="protected tail"):
        wc.validate(recent_tokens=3)
    with pytest.raises(WorkingContextError, match="over the budget of 3"):
        wc.validate(budget=3)
    with pytest.raises(WorkingContextError, match="above max_level 1"):
        wc.validate(max_level=1)


# ---------------------------------------------------------------- recency
def test_recency_fills_the_budget_with_the_newest_raw_tokens() -> None:
    wc = WorkingContext.recency(22, budget=8, block_size=4, recent_tokens=2)
    wc.validate(recent_tokens=2, budget=8)
    # shortest tiling of [0, s) plus raw [s, 22): s = 16 gives 1 + 6 = 7 entries; s = 15 would give 3 + 3 + 7
    assert wc.entries() == [(2, 0)] + [(0, t) for t in range(16, 22)]


def test_recency_tight_budget_uses_coarsest_nodes() -> None:
    wc = WorkingContext.recency(22, budget=4, block_size=4, recent_tokens=2)
    assert wc.entries() == EXAMPLE
    with pytest.raises(WorkingContextError, match=r"budget 3 is too small.*at least 4 entries"):
        WorkingContext.recency(22, budget=3, block_size=4, recent_tokens=2)
    with pytest.raises(WorkingContextError, match="too small"):
        WorkingContext.recency(22, budget=5, block_size=4, recent_tokens=6)


def test_recency_respects_max_level() -> None:
    wc = WorkingContext.recency(64, budget=16, block_size=4, recent_tokens=0, max_level=1)
    assert wc.entries() == [(1, i) for i in range(16)]
    with pytest.raises(WorkingContextError, match="up to level 1"):
        WorkingContext.recency(64, budget=15, block_size=4, max_level=1)
    assert WorkingContext.recency(64, budget=1, block_size=4).entries() == [(3, 0)]


def test_recency_with_room_for_everything_is_raw() -> None:
    assert WorkingContext.recency(10, budget=10, block_size=2) == WorkingContext.raw(10, 2)


# ---------------------------------------------------------------- edits
def test_expand_many_at_once() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    out = wc.expand([1, 0])
    assert out.entries() == [(1, 0), (1, 1), (1, 2), (1, 3)] + [(0, t) for t in range(16, 22)]
    out.validate(recent_tokens=2)
    assert wc.entries() == EXAMPLE  # immutable


def test_collapse_many_at_once() -> None:
    wc = WorkingContext.raw(10, 2)
    out = wc.collapse([0, 4, 8])
    assert out.entries() == [(1, 0), (0, 2), (0, 3), (1, 2), (0, 6), (0, 7), (1, 4)]
    with pytest.raises(WorkingContextError, match="cannot collapse at entry 0"):
        out.collapse([0])  # (1, 0) and (0, 2) are not siblings
    assert out.collapse([1]).entries()[:2] == [(1, 0), (1, 1)]


def test_expand_then_collapse_round_trips() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    expanded = wc.expand([0, 1])
    assert expanded.entries()[:4] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert expanded.collapse([0, 4]) == wc


def test_edit_expands_and_collapses_in_one_pass() -> None:
    wc = WorkingContext.from_entries([1, 1, 0, 0, 0, 0], [0, 1, 4, 5, 6, 7], 2, 8)
    out = wc.edit(expand=[0], collapse=[2, 4])
    assert out.entries() == [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3)]


RAW4 = [(0, t) for t in range(4)]


@pytest.mark.parametrize(
    ("entries", "block_size", "num_tokens", "kwargs", "message"),
    [
        (EXAMPLE, 4, 22, {"expand": [2]}, "raw token"),
        (EXAMPLE, 4, 22, {"expand": [4]}, "out of range"),
        (EXAMPLE, 4, 22, {"expand": [-1]}, "out of range"),
        (EXAMPLE, 4, 22, {"expand": [0, 0]}, "more than once"),
        (EXAMPLE, 4, 22, {"expand": [[0]]}, "1-D integer"),
        (EXAMPLE, 4, 22, {"expand": [0.0]}, "1-D integer"),
        (EXAMPLE, 4, 22, {"collapse": [1]}, "cannot collapse at entry 1"),
        (RAW4, 2, 4, {"collapse": [1]}, "cannot collapse at entry 1"),  # not aligned
        (RAW4, 2, 4, {"collapse": [2], "recent_tokens": 1}, "protected last 1 tokens"),
        ([(1, 0), (1, 1)], 2, 4, {"collapse": [0], "max_level": 1}, "max_level"),
        ([(1, 0), (1, 1)], 2, 4, {"expand": [1], "collapse": [0]}, "expanded and collapsed"),
    ],
)
def test_illegal_edits_raise(
    entries: list[tuple[int, int]], block_size: int, num_tokens: int, kwargs: dict[str, object], message: str
) -> None:
    wc = wc_of(entries, block_size, num_tokens)
    with pytest.raises(WorkingContextError, match=message):
        wc.edit(**kwargs)  # type: ignore[arg-type]


def test_collapse_can_build_the_top_level() -> None:
    wc = WorkingContext.from_entries([1, 1], [0, 1], 2, 4)
    assert wc.collapse([0]).entries() == [(2, 0)]
    assert wc.collapse([0], max_level=2).entries() == [(2, 0)]


def test_append_adds_raw_tokens() -> None:
    wc = wc_of(EXAMPLE, 4, 22).append(3)
    assert wc.num_tokens == 25
    assert wc.entries()[-3:] == [(0, 22), (0, 23), (0, 24)]
    wc.validate(recent_tokens=5)
    with pytest.raises(WorkingContextError, match="num_new_tokens"):
        wc.append(-1)


# ---------------------------------------------------------------- candidates
def test_candidates_respect_the_tail() -> None:
    wc = WorkingContext.from_entries([1, 1, 0, 0, 0, 0], [0, 1, 4, 5, 6, 7], 2, 8)
    assert wc.expandable_mask().tolist() == [True, True, False, False, False, False]
    assert wc.expandable_mask(recent_tokens=5).tolist() == [True, False, False, False, False, False]
    assert wc.collapsible_starts().tolist() == [0, 2, 4]
    assert wc.collapsible_starts(recent_tokens=1).tolist() == [0, 2]
    assert wc.collapsible_starts(recent_tokens=3).tolist() == [0]
    assert wc.collapsible_starts(max_level=1).tolist() == [2, 4]


# ---------------------------------------------------------------- positions and materialisation
def test_ordinal_positions() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    positions = entry_positions(wc, "ordinal")
    assert positions.tolist() == [0, 1, 2, 3]
    with pytest.raises(WorkingContextError, match="unknown position scheme"):
        entry_positions(wc, "no_such_scheme")


def tree_inputs(wcs: list[WorkingContext], trees, **kw):
    """``model_inputs`` over ``TreeSource(trees)`` with ordinal positions (the model's own rotary table)."""
    return model_inputs(TreeSource(trees), EntryRows.of(wcs, width=kw.pop("pad_to", None)), scheme="ordinal",
                        sigma_scale=0.0, head_dim=4, sequence_len=64, rotary_dtype=torch.float32, **kw)


def test_tree_inputs_gather_one_call_per_level() -> None:
    wc = WorkingContext.from_entries([2, 1, 0, 0, 0, 0, 1, 0], [0, 4, 20, 21, 22, 23, 6, 28], 4, 29)
    tree = FakeTree(4, 29)
    out = tree_inputs([wc], tree)
    torch.testing.assert_close(out.inputs_RWD[0], expected_vectors(wc), rtol=0, atol=0)
    assert out.value_ids_RW[0].tolist() == [-1, -1, 120, 121, 122, 123, -1, 128]  # tokens of raw entries only
    assert out.targets_RW is None and out.cos_sin is None
    assert sorted(tree.calls) == [(0, 5), (1, 2), (2, 1)]


def test_tree_source_checks_the_tree() -> None:
    wc = wc_of(EXAMPLE, 4, 22)
    with pytest.raises(WorkingContextError, match="block_size 2"):
        TreeSource(FakeTree(2, 22)).check([wc])
    with pytest.raises(WorkingContextError, match="holds only 21"):
        TreeSource(FakeTree(4, 21)).check([wc])
    TreeSource(FakeTree(4, 30)).check([wc])  # a tree may be ahead of the WC
    with pytest.raises(WorkingContextError, match="2 trees for 3"):
        TreeSource([FakeTree(4, 22), FakeTree(4, 22)]).check([wc, wc, wc])


def test_tree_inputs_pad_rows_of_different_layouts() -> None:
    a = wc_of(EXAMPLE, 4, 22)
    b = WorkingContext.raw(6, 4)
    c = WorkingContext.raw(0, 4)
    tree = FakeTree(4, 22)
    rows = EntryRows.of([a, b, c], width=7)
    out = tree_inputs([a, b, c], tree, pad_to=7)
    assert out.inputs_RWD.shape == (3, 7, 4)
    assert rows.valid_RW.tolist() == [[True] * 4 + [False] * 3, [True] * 6 + [False], [False] * 7]
    torch.testing.assert_close(out.inputs_RWD[0, :4], expected_vectors(a), rtol=0, atol=0)
    torch.testing.assert_close(out.inputs_RWD[1, :6], expected_vectors(b), rtol=0, atol=0)
    assert not out.inputs_RWD[torch.from_numpy(~rows.valid_RW)].any()
    assert rows.levels_RW[0].tolist() == [2, 1, 0, 0, PAD_LEVEL, PAD_LEVEL, PAD_LEVEL]
    assert rows.starts_RW[1].tolist() == [0, 1, 2, 3, 4, 5, 0]
    assert out.value_ids_RW[1].tolist() == [100, 101, 102, 103, 104, 105, -1]
    assert sorted(tree.calls) == [(0, 8), (1, 1), (2, 1)]  # one gather per level for the whole batch
    assert tree_inputs([a, b], tree).inputs_RWD.shape == (2, 6, 4)


def test_tree_inputs_with_one_tree_per_row() -> None:
    a = wc_of(EXAMPLE, 4, 22)
    trees = [FakeTree(4, 22, scale=1.0), FakeTree(4, 22, scale=2.0)]
    out = tree_inputs([a, a], trees)
    torch.testing.assert_close(out.inputs_RWD[0], expected_vectors(a, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(out.inputs_RWD[1], expected_vectors(a, 2.0), rtol=0, atol=0)


def test_tree_inputs_keep_autograd() -> None:
    a = wc_of(EXAMPLE, 4, 22)
    tree = FakeTree(4, 22, scale=3.0, requires_grad=True)
    out = tree_inputs([a, WorkingContext.raw(2, 4)], tree, pad_to=5)
    out.inputs_RWD[..., 3].sum().backward()
    assert tree.scale.grad is not None and float(tree.scale.grad) == 6.0  # 4 + 2 real entries


def test_tree_inputs_with_the_ram_tree() -> None:
    ram = pytest.importorskip("megacontext_plugin.tree.ram")
    from megacontext_plugin.tree.building import mean_pool_gist

    K, N, D = 4, 75, 3
    table = torch.randn(100, D, generator=torch.Generator().manual_seed(0))
    tree = ram.RamTree(K, D, lambda ids: table[ids], mean_pool_gist)
    token_ids = torch.randint(0, 100, (N,), generator=torch.Generator().manual_seed(1))
    tree.append(token_ids[:40])
    tree.append(token_ids[40:])
    coarse = WorkingContext.recency(N, budget=12, block_size=K, recent_tokens=4)
    assert coarse.entries()[0] == (3, 0)
    mixed = coarse.expand([0]).expand([1])  # (2, 0), (1, 4..7), (2, 2), (2, 3), raw 64..74
    assert set(mixed.levels.tolist()) == {0, 1, 2}
    for wc in (coarse, mixed):
        out = tree_inputs([wc], tree)
        for row, (level, index) in enumerate(wc.entries()):
            start, end = index * K**level, (index + 1) * K**level
            expected = table[token_ids[start:end]].mean(dim=0)  # nested means of equal blocks = flat mean
            torch.testing.assert_close(out.inputs_RWD[0, row], expected, rtol=1e-5, atol=1e-6)
