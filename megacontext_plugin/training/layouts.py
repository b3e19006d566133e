"""Working-context variants for training: the layouts (which nodes each variant shows).

A layout depends on the sequence length, block size, budget and the random generator only,
never on the tokens, so the layouts of step ``s+1`` can be sampled on a background thread while
step ``s`` runs (``LayoutPrefetcher``): the controller's numpy work stays off the critical path.

Rows of a :class:`VariantLayouts` are ordered ``r = b * V + v``; variant ``v = 0`` of every
sequence is the recency baseline (the last ``budget`` raw tokens: what vanilla attends to at
that budget), variants ``1..V-1`` are random legal working contexts that tile the whole
sequence: gists block-aligned, the protected recent tail raw, at most ``budget`` entries,
distinct within a sequence whenever the layout space allows.
"""

from __future__ import annotations

import concurrent.futures
import copy
from dataclasses import dataclass

import numpy as np

from ..context.inputs import PAD_LEVEL
from ..context.working_context import WorkingContext


@dataclass(frozen=True)
class VariantLayouts:
    """Layouts of ``R = B * V`` variant rows padded to ``W`` entries. Arrays are int64 ``[R, W]``."""

    levels_RW: np.ndarray
    """Entry level; ``PAD_LEVEL`` for padding."""
    indices_RW: np.ndarray
    """Node index within its level (0 for padding)."""
    starts_RW: np.ndarray
    ends_RW: np.ndarray
    """Token span ``[start, end)`` of each entry (0, 0 for padding)."""
    lengths_R: np.ndarray
    """Real entries per row."""
    batch: int
    variants: int
    duplicates: int
    """Variants that repeat another of the same sequence (the layout space is too small, or guided
    layouts agree)."""
    kinds: tuple[str, ...] = ()
    """What made each variant column: ``baseline``, ``on-policy``, ``teacher`` or ``random``."""

    def kind(self, v: int) -> str:
        return self.kinds[v] if self.kinds else ("baseline" if v == 0 else "random")

    def rows_per_kind(self) -> dict[str, int]:
        """Rows (sequences x variant columns) of each kind, every kind present."""
        kinds = [self.kind(v) for v in range(self.variants)]
        return {k: kinds.count(k) * self.batch for k in VARIANT_KINDS}

    @property
    def width(self) -> int:
        return int(self.levels_RW.shape[1])

    @property
    def valid_RW(self) -> np.ndarray:
        return self.levels_RW != PAD_LEVEL


VARIANT_KINDS = ("baseline", "on-policy", "teacher", "random")


def random_variant(
    sequence_len: int, block_size: int, budget: int, recent_tokens: int, rng: np.random.Generator
) -> WorkingContext:
    """One random legal working context of at most ``budget`` entries tiling the sequence.

    From the coarsest covering, expand random gists (any level) in a few vectorised rounds until
    no further expansion fits: a variant is at most ``K - 2`` entries short of the budget, so
    padding wastes little, and variants differ in which history they keep detailed.
    """
    K = block_size
    wc = WorkingContext.coarsest(sequence_len, K, recent_tokens)
    if len(wc) > budget:
        raise ValueError(
            f"budget {budget} cannot hold a working context of {sequence_len} tokens with a raw tail of "
            f"{recent_tokens} (the coarsest needs {len(wc)} entries)"
        )
    while True:
        room = (budget - len(wc)) // (K - 1)
        candidates = np.flatnonzero(wc.expandable_mask(recent_tokens))
        if room <= 0 or candidates.size == 0:
            return wc
        take = min(room, candidates.size, int(rng.integers(1, room + 1)))
        chosen = rng.choice(candidates, size=take, replace=False)
        wc = wc.expand(np.sort(chosen))


def sample_layouts(
    batch: int,
    variants: int,
    sequence_len: int,
    block_size: int,
    budget: int,
    recent_tokens: int,
    rng: np.random.Generator,
    max_tries: int = 8,
) -> VariantLayouts:
    """Layouts for ``batch`` sequences x ``variants`` (baseline first), padded to ``budget``."""
    if variants < 1:
        raise ValueError(f"need at least 1 variant (the baseline), got {variants}")
    if not 0 < budget <= sequence_len:
        raise ValueError(f"budget must be in [1, {sequence_len}], got {budget}")
    R, W = batch * variants, budget
    levels = np.full((R, W), PAD_LEVEL, dtype=np.int64)
    indices = np.zeros((R, W), dtype=np.int64)
    starts = np.zeros((R, W), dtype=np.int64)
    ends = np.zeros((R, W), dtype=np.int64)
    lengths = np.zeros(R, dtype=np.int64)
    duplicates = 0
    baseline = np.arange(sequence_len - budget, sequence_len, dtype=np.int64)
    for b in range(batch):
        seen: set[bytes] = set()
        for v in range(variants):
            r = b * variants + v
            if v == 0:
                lv, ix, st, en = np.zeros(W, dtype=np.int64), baseline, baseline, baseline + 1
            else:
                for _ in range(max_tries):
                    wc = random_variant(sequence_len, block_size, budget, recent_tokens, rng)
                    key = wc.levels.tobytes() + wc.indices.tobytes()
                    if key not in seen:
                        break
                else:
                    duplicates += 1
                seen.add(key)
                lv, ix, st, en = wc.levels, wc.indices, wc.starts, wc.ends
            n = len(lv)
            levels[r, :n], indices[r, :n], starts[r, :n], ends[r, :n] = lv, ix, st, en
            lengths[r] = n
    return VariantLayouts(levels, indices, starts, ends, lengths, batch, variants, duplicates)


def with_guided(sampled: VariantLayouts, guided: list[list[WorkingContext]], horizon: int,
                kinds: tuple[str, ...] = ()) -> VariantLayouts:
    """``sampled`` (baseline + random rows per sequence) with each sequence's guided prompt layouts
    (``guided[b]``, each followed by the ``horizon`` raw) inserted after its baseline: rows
    ``[baseline, guided..., random...]``; ``kinds`` names the guided columns. A guided layout equal
    to an earlier row of its sequence counts as a duplicate."""
    B, Vs, W = sampled.batch, sampled.variants, sampled.width
    G = len(guided[0]) if guided else 0
    if G == 0:
        return sampled
    V = Vs + G
    arrays = [np.full((B * V, W), PAD_LEVEL, dtype=np.int64), np.zeros((B * V, W), dtype=np.int64),
              np.zeros((B * V, W), dtype=np.int64), np.zeros((B * V, W), dtype=np.int64)]
    lengths = np.zeros(B * V, dtype=np.int64)
    old = (sampled.levels_RW, sampled.indices_RW, sampled.starts_RW, sampled.ends_RW)
    new_rows = np.array([b * V + v for b in range(B) for v in [0, *range(G + 1, V)]])
    for dst, src in zip(arrays, old, strict=True):
        dst[new_rows] = src
    lengths[new_rows] = sampled.lengths_R
    duplicates = sampled.duplicates
    for b in range(B):
        seen = {sampled.levels_RW[b * Vs + v].tobytes() for v in range(Vs)}
        for g, prompt_wc in enumerate(guided[b]):
            wc = prompt_wc.append(horizon)
            n = len(wc)
            if n > W:
                raise ValueError(f"a guided layout has {n} entries, more than the budget {W}")
            r = b * V + 1 + g
            for dst, src in zip(arrays, (wc.levels, wc.indices, wc.starts, wc.ends), strict=True):
                dst[r, :n] = src
            lengths[r] = n
            key = arrays[0][r].tobytes()
            duplicates += key in seen
            seen.add(key)
    guided_kinds = tuple(kinds) or ("guided",) * G
    all_kinds = ("baseline", *guided_kinds, *(sampled.kind(v) for v in range(1, Vs)))
    return VariantLayouts(*arrays, lengths, B, V, duplicates, all_kinds)


_Sampled = tuple[VariantLayouts, np.random.Generator]
"""A background job's result: the layouts and the generator copy after drawing them."""


class LayoutPrefetcher:
    """Samples the next step's layouts on one background thread (layouts never depend on data).

    Deterministic: requests are served in order from one seeded generator, so a run with the
    same seed and the same sequence of requests gets the same layouts, prefetched or not. The
    look-ahead draws from a *copy* of the generator; a hit adopts the copy's final state, a miss
    (any other request: a new length T, batch or budget) drops it unseen and samples on the
    caller's thread, with no wait for the background draw and nothing to rewind.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-layouts")
        self._pending: tuple[tuple[int, ...], concurrent.futures.Future[_Sampled]] | None = None

    def get(self, batch: int, variants: int, sequence_len: int, block_size: int, budget: int,
            recent_tokens: int, next_budget: int | None = None, next_variants: int | None = None) -> VariantLayouts:
        """Layouts for this request; starts sampling the next one (``next_budget``, same shape, with
        ``next_variants`` columns when given) in the background."""
        key = (batch, variants, sequence_len, block_size, budget, recent_tokens)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            layouts, rng_after = pending[1].result()
            self.rng.bit_generator.state = rng_after.bit_generator.state
        else:
            if pending is not None:
                pending[1].cancel()  # drawn from a copy: self.rng has not moved
            layouts = sample_layouts(*key, self.rng)
        if next_budget is not None:
            next_key = (batch, next_variants or variants, sequence_len, block_size, next_budget, recent_tokens)
            self._pending = (next_key, self._pool.submit(_sample_on, next_key, copy.deepcopy(self.rng)))
        return layouts

    def state(self) -> dict:
        """Generator state for checkpoints, as if nothing had been prefetched (the look-ahead never
        moves ``rng``): saving a checkpoint never changes the run, and a resumed run samples
        exactly the layouts the run would have."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._drop_pending()
        self.rng.bit_generator.state = state

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None

    def close(self) -> None:
        self._drop_pending()
        self._pool.shutdown(wait=True)


def _sample_on(key: tuple[int, ...], rng: np.random.Generator) -> _Sampled:
    """The background job: layouts for ``key`` drawn from ``rng`` (a copy), and the copy afterwards."""
    return sample_layouts(*key, rng), rng
