"""Making room in a full working context, and where two working contexts first differ.

Both are pure functions of working contexts and LensNet's utilities: the refocus policy
(``refocus.Refocuser``) decides when to call them, the KV cache (``forward.CachedForward``) reads
``first_difference`` to know how much of itself is still valid.
"""

from __future__ import annotations

import math

import numpy as np

from ..context import WorkingContext
from ..focus import CooldownTracker
from .errors import SessionError


def first_difference(a: WorkingContext, b: WorkingContext) -> int:
    """First entry index where ``a`` and ``b`` differ (level or node); the shorter length if one
    is a prefix of the other."""
    n = min(len(a), len(b))
    diff = np.flatnonzero((a.levels[:n] != b.levels[:n]) | (a.indices[:n] != b.indices[:n]))
    return int(diff[0]) if diff.size else n


def make_room(wc: WorkingContext, utilities_W: np.ndarray, target: int, recent_tokens: int, max_level: int,
              collapse_threshold: float = 0.1, cooldown: CooldownTracker | None = None, now: int = 0,
              prefer_from: int | None = None, lens_level: int | None = None
              ) -> tuple[WorkingContext, np.ndarray, np.ndarray, np.ndarray]:
    """Collapse sibling groups until ``len(wc) <= target`` (see the module docstring for the order).

    With ``lens_level``, only collapses that make a parent of level at most ``lens_level`` (the
    coarsest LensNet trained on) are candidates while there are any; coarser parents come only
    when the history cannot fit otherwise (``focus.start_layout`` is the same rule for a prompt).

    Order: groups in cooldown last; then by LensNet's opinion (mean utility below
    ``-collapse_threshold`` first, most negative first; above ``+collapse_threshold`` last); among
    groups without an opinion, those starting at or after token ``prefer_from`` (the answer being
    generated) first; then oldest first.

    Returns ``(wc, utilities of the new WC, levels, indices of the parents made)``; a parent's
    utility is its children's mean (the allocator's collapse utility). A round collapses as many
    groups as the excess needs, so the loop runs about once per level. ``SessionError`` if no
    legal collapse is left above ``target`` (the budget is too small for this history).
    """
    K = wc.block_size
    u_W = np.asarray(utilities_W, dtype=np.float32)
    made_levels: list[np.ndarray] = []
    made_indices: list[np.ndarray] = []
    while len(wc) > target:
        starts_C = np.zeros(0, dtype=np.int64)
        if lens_level is not None and lens_level < max_level:
            starts_C = wc.collapsible_starts(recent_tokens, lens_level)
        if starts_C.size == 0:
            starts_C = wc.collapsible_starts(recent_tokens, max_level)
        if starts_C.size == 0:
            raise SessionError(
                f"cannot fit {wc.num_tokens} tokens of history into {target} working-context entries with the "
                f"last {recent_tokens} raw and gists up to level {max_level}: raise the budget or lower the tail")
        need = math.ceil((len(wc) - target) / (K - 1))
        members_CK = starts_C[:, None] + np.arange(K)
        mean_C = u_W[members_CK].mean(axis=1, dtype=np.float64)
        opinion_C = np.where(mean_C < -collapse_threshold, mean_C, np.where(mean_C > collapse_threshold, 1.0, 0.0))
        parent_lv_C, parent_ix_C = wc.levels[starts_C] + 1, wc.indices[starts_C] // K
        blocked_C = (cooldown.blocked(parent_lv_C, parent_ix_C, now) if cooldown is not None
                     else np.zeros(starts_C.size, dtype=bool))
        later_C = (wc.starts[starts_C] < prefer_from) if prefer_from is not None else np.zeros(starts_C.size, bool)
        order = np.lexsort((starts_C, later_C, opinion_C, blocked_C))  # last key first: blocked, opinion, region, age
        pick = np.sort(order[:need])
        chosen_M = starts_C[pick]
        made_levels.append(parent_lv_C[pick])
        made_indices.append(parent_ix_C[pick])
        keep_W = np.ones(len(wc), dtype=bool)
        keep_W[(chosen_M[:, None] + np.arange(1, K)).ravel()] = False
        u_W = u_W.copy()
        u_W[chosen_M] = mean_C[pick].astype(np.float32)
        u_W = u_W[keep_W]
        wc = wc.edit(collapse=chosen_M, recent_tokens=recent_tokens, max_level=max_level)
    empty = np.zeros(0, dtype=np.int64)
    levels = np.concatenate(made_levels).astype(np.int64) if made_levels else empty
    indices = np.concatenate(made_indices).astype(np.int64) if made_indices else empty
    return wc, u_W, levels, indices


