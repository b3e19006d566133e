"""The working context (WC): an ordered, gap-free tiling of the token history by tree nodes.

An entry ``(level, index)`` covers tokens ``[index * K**level, (index + 1) * K**level)``
(K = ``block_size``): level 0 is one raw token, level ``k >= 1`` one gist node. A WC of W
entries over N tokens is two numpy arrays, ``levels[W]`` (int8) and ``indices[W]`` (int64).

Invariants (``validate`` checks them all; every edit keeps them):

- the entries tile ``[0, N)`` in order: the first starts at 0, each starts where the previous
  ended, the last ends at N (so no gap and no overlap);
- every gist entry is one aligned node: it starts at a multiple of ``K**level`` and covers
  exactly ``K**level`` tokens (true by construction of the representation);
- every gist node is complete: its span ends at or before N (the tree has made it);
- the protected recent tail, the last ``recent_tokens`` tokens, is raw (level 0);
- ``len(wc) <= budget``.

Objects are immutable: edits return a new ``WorkingContext``. All bookkeeping is vectorised
(numpy masks, ``np.repeat``, fancy indexing), with no Python loop over entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

LEVEL_DTYPE = np.int8
INDEX_DTYPE = np.int64
_MAX_SPAN = 1 << 62
"""Largest node width we represent; spans stay far from int64 overflow."""


class WorkingContextError(ValueError):
    """A working context is illegal, or an edit on it would make it illegal."""


@lru_cache(maxsize=64)
def _width_table(block_size: int) -> np.ndarray:
    """``widths[L + 1]`` (int64): ``K**level`` for every level whose width is at most 2**62."""
    widths = [1]
    while widths[-1] * block_size <= _MAX_SPAN:
        widths.append(widths[-1] * block_size)
    table = np.array(widths, dtype=np.int64)
    table.setflags(write=False)
    return table


def max_representable_level(block_size: int) -> int:
    """Highest level whose node width ``K**level`` this module represents (``<= 2**62``)."""
    return len(_width_table(block_size)) - 1


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 2:
        raise WorkingContextError(f"block_size must be an integer >= 2, got {block_size!r}")
    return int(block_size)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise WorkingContextError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _as_positions(name: str, positions: Sequence[int] | np.ndarray, length: int) -> np.ndarray:
    """``positions[m]`` as sorted, unique, in-range int64 (clear error otherwise)."""
    pos_M = np.asarray(positions)
    if pos_M.size == 0:
        return np.zeros(0, dtype=np.int64)
    if pos_M.ndim != 1 or not np.issubdtype(pos_M.dtype, np.integer):
        raise WorkingContextError(f"{name} positions must be a 1-D integer array, got {pos_M.dtype}{pos_M.shape}")
    pos_M = np.sort(pos_M.astype(np.int64))
    if pos_M[0] < 0 or pos_M[-1] >= length:
        bad = pos_M[0] if pos_M[0] < 0 else pos_M[-1]
        raise WorkingContextError(f"{name} position {bad} is out of range for a working context of {length} entries")
    if pos_M.size > 1 and np.any(pos_M[1:] == pos_M[:-1]):
        dup = pos_M[1:][pos_M[1:] == pos_M[:-1]][0]
        raise WorkingContextError(f"{name} position {dup} is given more than once")
    return pos_M


class WorkingContext:
    """Ordered tiling of tokens ``[0, num_tokens)`` by entries ``(levels[W], indices[W])``.

    Build with ``raw``, ``recency`` or ``from_entries`` (the constructor validates the tiling
    too). Read ``levels``, ``indices``, ``starts``, ``ends`` (read-only numpy arrays, shape
    ``[W]``), ``block_size``, ``num_tokens`` and ``len(wc)``.
    """

    __slots__ = ("_block_size", "_ends", "_indices", "_levels", "_num_tokens", "_starts")

    def __init__(
        self,
        levels: Sequence[int] | np.ndarray,
        indices: Sequence[int] | np.ndarray,
        block_size: int,
        num_tokens: int,
    ) -> None:
        block_size = _check_block_size(block_size)
        num_tokens = _check_count("num_tokens", num_tokens)
        lv = np.asarray(levels)
        ix = np.asarray(indices)
        if lv.ndim != 1 or ix.ndim != 1 or lv.shape != ix.shape:
            raise WorkingContextError(
                f"levels and indices must be 1-D arrays of one length, got shapes {lv.shape} and {ix.shape}"
            )
        for name, arr in (("levels", lv), ("indices", ix)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise WorkingContextError(f"{name} must be integers, got dtype {arr.dtype}")
        max_level = max_representable_level(block_size)
        if lv.size and (lv.min() < 0 or lv.max() > max_level):
            bad = int(np.flatnonzero((lv < 0) | (lv > max_level))[0])
            raise WorkingContextError(
                f"entry {bad}: level {int(lv[bad])} is outside [0, {max_level}] for block_size {block_size}"
            )
        if ix.size and ix.min() < 0:
            bad = int(np.flatnonzero(ix < 0)[0])
            raise WorkingContextError(f"entry {bad}: negative node index {int(ix[bad])}")
        lv = lv.astype(LEVEL_DTYPE)
        ix = ix.astype(INDEX_DTYPE)
        widths = _width_table(block_size)[lv]
        if ix.size and np.any(ix > _MAX_SPAN // widths):
            bad = int(np.flatnonzero(ix > _MAX_SPAN // widths)[0])
            raise WorkingContextError(f"entry {bad}: node index {int(ix[bad])} is too large to represent")
        self._init(lv, ix, block_size, num_tokens)
        self._check_tiling()

    def _init(self, levels: np.ndarray, indices: np.ndarray, block_size: int, num_tokens: int) -> None:
        levels.setflags(write=False)
        indices.setflags(write=False)
        self._levels = levels
        self._indices = indices
        self._block_size = block_size
        self._num_tokens = num_tokens
        self._starts: np.ndarray | None = None
        self._ends: np.ndarray | None = None

    @classmethod
    def _trusted(cls, levels: np.ndarray, indices: np.ndarray, block_size: int, num_tokens: int) -> WorkingContext:
        """Wrap arrays known to be legal (made by this module's edits); skips validation."""
        wc = cls.__new__(cls)
        wc._init(levels, indices, block_size, num_tokens)
        return wc

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_entries(
        cls,
        levels: Sequence[int] | np.ndarray,
        indices: Sequence[int] | np.ndarray,
        block_size: int,
        num_tokens: int,
    ) -> WorkingContext:
        """A WC from explicit entries, validated (tiling, alignment, completeness)."""
        return cls(levels, indices, block_size, num_tokens)

    @classmethod
    def raw(cls, num_tokens: int, block_size: int) -> WorkingContext:
        """Every token as its own LOD0 entry (W = N)."""
        block_size = _check_block_size(block_size)
        num_tokens = _check_count("num_tokens", num_tokens)
        return cls._trusted(
            np.zeros(num_tokens, dtype=LEVEL_DTYPE), np.arange(num_tokens, dtype=INDEX_DTYPE), block_size, num_tokens
        )

    @classmethod
    def coarsest(cls, num_tokens: int, block_size: int, recent_tokens: int = 0) -> WorkingContext:
        """The shortest legal layout: the last ``recent_tokens`` raw, everything older in the
        largest aligned complete nodes (greedy from old to new; unaligned leftovers raw)."""
        block_size = _check_block_size(block_size)
        num_tokens = _check_count("num_tokens", num_tokens)
        boundary = num_tokens - min(_check_count("recent_tokens", recent_tokens), num_tokens)
        widths = _width_table(block_size)
        top = len(widths) - 1
        levels: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        pos = 0
        for level in range(top, 0, -1):
            width = int(widths[level])
            end = (boundary // width) * width
            if end > pos:
                idx = np.arange(pos // width, end // width, dtype=INDEX_DTYPE)
                levels.append(np.full(idx.shape, level, dtype=LEVEL_DTYPE))
                indices.append(idx)
                pos = end
        levels.append(np.zeros(num_tokens - pos, dtype=LEVEL_DTYPE))
        indices.append(np.arange(pos, num_tokens, dtype=INDEX_DTYPE))
        return cls._trusted(np.concatenate(levels), np.concatenate(indices), block_size, num_tokens)

    @classmethod
    def recency(
        cls,
        num_tokens: int,
        budget: int,
        block_size: int,
        recent_tokens: int = 0,
        max_level: int | None = None,
    ) -> WorkingContext:
        """The recency layout: the longest raw suffix that fits, older history as coarse as it gets.

        Tokens ``[s, N)`` are raw (always including the protected last ``recent_tokens``) and
        ``[0, s)`` is covered greedily from old to new by the largest aligned complete nodes
        (level at most ``max_level``; default: any level the history has), which is the
        shortest possible tiling of ``[0, s)``. ``s`` is the smallest split for which the WC has
        at most ``budget`` entries; levels therefore never increase from old to new.

        Raises ``WorkingContextError`` when no layout fits: the budget is smaller than the
        protected tail plus the shortest tiling of the rest at the allowed levels.
        """
        block_size = _check_block_size(block_size)
        num_tokens = _check_count("num_tokens", num_tokens)
        budget = _check_count("budget", budget)
        recent_tokens = _check_count("recent_tokens", recent_tokens)
        top = max_representable_level(block_size)
        if max_level is not None:
            top = min(top, _check_count("max_level", max_level))
        widths = _width_table(block_size)
        protected_start = num_tokens - min(recent_tokens, num_tokens)
        while top > 0 and widths[top] > protected_start:
            top -= 1
        width_L = widths[: top + 1]

        def shortest_tiling_len(split: int) -> int:
            digits = split // width_L
            digits[:-1] %= block_size
            return int(digits.sum())

        def total_len(split: int) -> int:
            return shortest_tiling_len(split) + (num_tokens - split)

        if total_len(protected_start) > budget:
            raise WorkingContextError(
                f"budget {budget} is too small: {num_tokens} tokens with the last {recent_tokens} protected "
                f"need at least {total_len(protected_start)} entries with nodes up to level {top} "
                f"(block_size {block_size})"
            )
        lo, hi = 0, protected_start  # total_len is non-increasing in split: find the smallest that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if total_len(mid) <= budget:
                hi = mid
            else:
                lo = mid + 1
        split = lo
        counts_L = split // width_L
        counts_L[:-1] %= block_size
        levels_parts: list[np.ndarray] = []
        index_parts: list[np.ndarray] = []
        offset = 0
        for level in range(top, -1, -1):  # at most ~62 levels: a loop over levels, not entries
            count = int(counts_L[level])
            if count:
                first = offset // int(width_L[level])
                levels_parts.append(np.full(count, level, dtype=LEVEL_DTYPE))
                index_parts.append(np.arange(first, first + count, dtype=INDEX_DTYPE))
                offset += count * int(width_L[level])
        levels_parts.append(np.zeros(num_tokens - split, dtype=LEVEL_DTYPE))
        index_parts.append(np.arange(split, num_tokens, dtype=INDEX_DTYPE))
        return cls._trusted(np.concatenate(levels_parts), np.concatenate(index_parts), block_size, num_tokens)

    # ------------------------------------------------------------------ properties
    @property
    def levels(self) -> np.ndarray:
        """``levels[W]`` (int8, read-only): 0 = raw token, k >= 1 = gist node."""
        return self._levels

    @property
    def indices(self) -> np.ndarray:
        """``indices[W]`` (int64, read-only): node index within its level."""
        return self._indices

    @property
    def block_size(self) -> int:
        """K: children per node."""
        return self._block_size

    @property
    def num_tokens(self) -> int:
        """N: tokens of history tiled by this WC."""
        return self._num_tokens

    @property
    def widths(self) -> np.ndarray:
        """``widths[W]`` (int64): tokens covered by each entry (``K**level``)."""
        return _width_table(self._block_size)[self._levels]

    def _compute_spans(self) -> None:
        widths_W = self.widths
        starts_W = self._indices * widths_W
        ends_W = starts_W + widths_W
        starts_W.setflags(write=False)
        ends_W.setflags(write=False)
        self._starts, self._ends = starts_W, ends_W

    @property
    def starts(self) -> np.ndarray:
        """``starts[W]`` (int64, read-only): first token of each entry."""
        if self._starts is None:
            self._compute_spans()
        assert self._starts is not None
        return self._starts

    @property
    def ends(self) -> np.ndarray:
        """``ends[W]`` (int64, read-only): one past the last token of each entry."""
        if self._ends is None:
            self._compute_spans()
        assert self._ends is not None
        return self._ends

    @property
    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts[W], ends[W])`` (int64): token span ``[start, end)`` of each entry."""
        return self.starts, self.ends

    def __len__(self) -> int:
        return int(self._levels.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkingContext):
            return NotImplemented
        return (
            self._block_size == other._block_size
            and self._num_tokens == other._num_tokens
            and np.array_equal(self._levels, other._levels)
            and np.array_equal(self._indices, other._indices)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        counts = np.bincount(self._levels.astype(np.int64)) if len(self) else np.zeros(0, dtype=np.int64)
        per_level = ", ".join(f"L{k}={int(c)}" for k, c in enumerate(counts) if c)
        return (
            f"WorkingContext(W={len(self)}, N={self._num_tokens}, K={self._block_size}"
            + (f", {per_level}" if per_level else "")
            + ")"
        )

    def entries(self) -> list[tuple[int, int]]:
        """``[(level, index), ...]`` as Python ints (for tests and debugging; O(W) objects)."""
        return list(zip(self._levels.tolist(), self._indices.tolist(), strict=True))

    # ------------------------------------------------------------------ validation
    def _check_tiling(self) -> None:
        num_tokens = self._num_tokens
        if len(self) == 0:
            if num_tokens:
                raise WorkingContextError(f"an empty working context cannot tile {num_tokens} tokens")
            return
        starts_W, ends_W = self.spans
        incomplete = (self._levels > 0) & (ends_W > num_tokens)
        if incomplete.any():
            bad = int(np.flatnonzero(incomplete)[0])
            raise WorkingContextError(
                f"entry {bad}: gist (level {int(self._levels[bad])}, index {int(self._indices[bad])}) covers "
                f"[{int(starts_W[bad])}, {int(ends_W[bad])}) but only {num_tokens} tokens exist (incomplete node)"
            )
        if starts_W[0] != 0:
            raise WorkingContextError(
                f"entry 0 starts at token {int(starts_W[0])}, not 0: tokens before it are missing"
            )
        broken = starts_W[1:] != ends_W[:-1]
        if broken.any():
            bad = int(np.flatnonzero(broken)[0]) + 1
            kind = "gap" if starts_W[bad] > ends_W[bad - 1] else "overlap or disorder"
            raise WorkingContextError(
                f"entry {bad} starts at token {int(starts_W[bad])} but entry {bad - 1} ends at "
                f"{int(ends_W[bad - 1])} ({kind})"
            )
        if ends_W[-1] != num_tokens:
            raise WorkingContextError(
                f"the last entry ends at token {int(ends_W[-1])}, but the history has {num_tokens} tokens"
            )

    def validate(self, recent_tokens: int = 0, budget: int | None = None, max_level: int | None = None) -> None:
        """Check every invariant; raise ``WorkingContextError`` naming the first violation.

        Tiling of ``[0, N)`` in order without gap or overlap; gists aligned and complete; the last
        ``recent_tokens`` tokens raw; ``len(self) <= budget`` (if given); no level above
        ``max_level`` (if given).
        """
        recent_tokens = _check_count("recent_tokens", recent_tokens)
        self._check_tiling()
        tail_start = self._num_tokens - min(recent_tokens, self._num_tokens)
        in_tail = (self._levels > 0) & (self.ends > tail_start)
        if in_tail.any():
            bad = int(np.flatnonzero(in_tail)[0])
            raise WorkingContextError(
                f"entry {bad}: gist (level {int(self._levels[bad])}) covers [{int(self.starts[bad])}, "
                f"{int(self.ends[bad])}), inside the protected tail [{tail_start}, {self._num_tokens}) "
                f"that must stay raw"
            )
        if budget is not None and len(self) > _check_count("budget", budget):
            raise WorkingContextError(f"working context has {len(self)} entries, over the budget of {budget}")
        if max_level is not None and len(self) and int(self._levels.max()) > _check_count("max_level", max_level):
            bad = int(np.flatnonzero(self._levels > max_level)[0])
            raise WorkingContextError(f"entry {bad}: level {int(self._levels[bad])} is above max_level {max_level}")

    # ------------------------------------------------------------------ candidates
    def expandable_mask(self, recent_tokens: int = 0) -> np.ndarray:
        """``mask[W]`` (bool): gist entries lying wholly before the protected tail."""
        tail_start = self._num_tokens - min(_check_count("recent_tokens", recent_tokens), self._num_tokens)
        return (self._levels > 0) & (self.ends <= tail_start)

    def collapsible_starts(self, recent_tokens: int = 0, max_level: int | None = None) -> np.ndarray:
        """``positions[m]`` (int64, ascending): where a full aligned sibling group starts.

        Position ``p`` qualifies when entries ``p .. p+K-1`` are the K children of one parent
        (one level, first index a multiple of K, hence consecutive indices since the WC is a
        tiling), the parent's level is at most ``max_level`` (default: the largest
        representable) and the parent ends at or before the protected tail's first token (so the
        parent is complete and no protected token gets folded). Groups never overlap.
        """
        K = self._block_size
        W = len(self)
        if W < K:
            return np.zeros(0, dtype=np.int64)
        tail_start = self._num_tokens - min(_check_count("recent_tokens", recent_tokens), self._num_tokens)
        top = max_representable_level(K)
        if max_level is not None:
            top = min(top, _check_count("max_level", max_level))
        # Entry p starts a group iff its index is a multiple of K and entries p..p+K-1 cover exactly
        # K * width(p) tokens: in a tiling, K entries whose first and total width match can only
        # be K entries of that one level (a larger one would not fit, a smaller one leaves a gap).
        first_Q = self._indices[: W - K + 1]
        aligned_A = np.flatnonzero(first_Q & (K - 1) == 0 if K & (K - 1) == 0 else first_Q % K == 0)
        widths_A = _width_table(K)[self._levels[aligned_A]]
        ends_A = self.ends[aligned_A + (K - 1)]
        ok_A = ends_A - self.starts[aligned_A] == K * widths_A
        ok_A &= ends_A <= tail_start
        ok_A &= self._levels[aligned_A] < top  # the parent (level + 1) must be allowed
        return aligned_A[ok_A]

    # ------------------------------------------------------------------ edits
    def expand(self, positions: Sequence[int] | np.ndarray) -> WorkingContext:
        """Replace each gist entry at ``positions[m]`` by its K children one level down."""
        return self.edit(expand=positions)

    def collapse(
        self,
        positions: Sequence[int] | np.ndarray,
        recent_tokens: int = 0,
        max_level: int | None = None,
    ) -> WorkingContext:
        """Replace each sibling group starting at ``positions[m]`` by its parent (one level up)."""
        return self.edit(collapse=positions, recent_tokens=recent_tokens, max_level=max_level)

    def edit(
        self,
        expand: Sequence[int] | np.ndarray = (),
        collapse: Sequence[int] | np.ndarray = (),
        recent_tokens: int = 0,
        max_level: int | None = None,
    ) -> WorkingContext:
        """Apply many expansions and collapses at once, in one vectorised pass.

        Positions refer to this WC. ``expand[m]``: gist entries (level >= 1). ``collapse[c]``:
        starts of full aligned sibling groups (see ``collapsible_starts``), whose parent must
        end before the protected tail and have a level <= ``max_level``. An entry may not be
        both expanded and part of a collapsed group. Illegal edits raise ``WorkingContextError``
        and leave nothing changed (the object is immutable).
        """
        W = len(self)
        K = self._block_size
        exp_M = _as_positions("expand", expand, W)
        col_C = _as_positions("collapse", collapse, W)
        if exp_M.size:
            not_gist = self._levels[exp_M] == 0
            if not_gist.any():
                bad = int(exp_M[not_gist][0])
                raise WorkingContextError(f"cannot expand entry {bad}: it is a raw token (level 0)")
        if col_C.size:
            ok_W = np.zeros(W, dtype=bool)
            ok_W[self.collapsible_starts(recent_tokens, max_level)] = True
            bad_C = ~ok_W[col_C]
            if bad_C.any():
                bad = int(col_C[bad_C][0])
                raise WorkingContextError(
                    f"cannot collapse at entry {bad}: entries {bad}..{bad + K - 1} are not K aligned siblings "
                    f"whose complete parent (level <= max_level) lies before the protected last "
                    f"{recent_tokens} tokens"
                )
            if exp_M.size:
                member_W = np.zeros(W, dtype=bool)
                member_W[(col_C[:, None] + np.arange(K)).ravel()] = True
                clash = member_W[exp_M]
                if clash.any():
                    bad = int(exp_M[clash][0])
                    raise WorkingContextError(f"entry {bad} cannot be expanded and collapsed in one edit")
        return self._apply(exp_M, col_C)

    def _apply(self, exp_M: np.ndarray, col_C: np.ndarray) -> WorkingContext:
        """Apply legal edits (positions sorted, unique, non-conflicting). No checks."""
        if exp_M.size == 0 and col_C.size == 0:
            return self
        K = self._block_size
        W = len(self)
        counts_W = np.ones(W, dtype=np.int64)
        counts_W[exp_M] = K
        if col_C.size:
            counts_W[(col_C[:, None] + np.arange(1, K)).ravel()] = 0
        new_levels = np.repeat(self._levels, counts_W)
        new_indices = np.repeat(self._indices, counts_W)
        out_start_W = np.cumsum(counts_W) - counts_W  # where each old entry's output begins
        if exp_M.size:
            child_MK = out_start_W[exp_M][:, None] + np.arange(K)
            new_levels[child_MK] -= 1
            new_indices[child_MK] = self._indices[exp_M][:, None] * K + np.arange(K)
        if col_C.size:
            parent_C = out_start_W[col_C]
            new_levels[parent_C] += 1
            new_indices[parent_C] //= K
        return WorkingContext._trusted(new_levels, new_indices, K, self._num_tokens)

    def append(self, num_new_tokens: int) -> WorkingContext:
        """Extend the history by ``num_new_tokens`` raw tokens (LOD0 entries at the end)."""
        n = _check_count("num_new_tokens", num_new_tokens)
        if n == 0:
            return self
        N = self._num_tokens
        return WorkingContext._trusted(
            np.concatenate([self._levels, np.zeros(n, dtype=LEVEL_DTYPE)]),
            np.concatenate([self._indices, np.arange(N, N + n, dtype=INDEX_DTYPE)]),
            self._block_size,
            N + n,
        )
