"""One allocator iteration: from utilities to a set of legal, non-conflicting edits.

Candidates (all vectorised over the W entries):

- **expand** entry i: a gist (level >= 1) lying wholly before the protected tail, not in
  cooldown, with ``u[i] > expand_threshold``; its score is ``u[i]``;
- **collapse** group p: K aligned siblings ``p .. p+K-1`` whose parent is complete, allowed
  (level <= max_level), lies wholly before the protected tail and is not in cooldown, with group
  utility ``g = mean(u[p:p+K]) < -collapse_threshold``; its score is ``|g|``.

Utilities are handled as float32 (LensNet's output type); threshold tests are exact float64
comparisons of those values. Ranking is by score, highest first, ties broken by kind (expansion
first) then WC position (older first). While the WC is longer than the soft maximum, every
collapse ranks ahead of every expansion. ``stochastic_greedy`` reorders the top ``k`` of that
ranking by sampling without replacement from ``softmax(score / temperature)`` (Gumbel top-k);
the candidates after the top k keep their greedy order behind them, so when the budget is full
and the top k are all expansions that cannot fit, the walk still reaches the collapses that make
room (a sampler limited to the top k would stall there).

Selection walks the ranking once:

1. conflicts are settled by rank: an expansion and a collapse group that contains it cannot
   both happen, and the better-ranked one wins (so a group is never folded while one of its
   members is ranked as more worth expanding, even if the budget later refuses that expansion);
2. the survivors are taken in rank order until ``max_replacements`` are taken: a collapse is
   always taken (it frees K - 1 entries); an expansion is taken only if the length after all
   edits taken so far stays within ``budget`` (each adds K - 1 entries).

The walk loops in Python over at most ``max_replacements + 1`` runs, never over entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..context.working_context import WorkingContext
from .config import FocusConfig
from .cooldown import CooldownTracker

_NO_POSITIONS = np.zeros(0, dtype=np.int64)
_INF_BITS = np.uint64(0x7F800000)


@dataclass(frozen=True)
class EditPlan:
    """The edits chosen in one iteration and what was refused (positions refer to the input WC)."""

    expand: np.ndarray
    """``positions[m_e]`` (int64, ascending): entries to expand."""
    collapse: np.ndarray
    """``positions[m_c]`` (int64, ascending): first entries of sibling groups to collapse."""
    candidates: int
    """Candidates that passed the thresholds (before cooldown)."""
    rejected_cooldown: int
    """Candidates held back because their node flipped less than ``cooldown`` refocuses ago."""
    rejected_conflict: int
    """Candidates reached by the walk but overlapping a better-ranked edit."""
    rejected_budget: int
    """Expansions reached by the walk but refused because the WC would exceed the budget."""

    @property
    def num_edits(self) -> int:
        return int(self.expand.shape[0] + self.collapse.shape[0])


def float32_below(threshold: float) -> np.float32:
    """Largest float32 <= ``threshold``: for float32 ``x``, ``x > threshold`` iff ``x > float32_below``."""
    top = np.finfo(np.float32).max
    if threshold >= float(top):
        return top
    t32 = np.float32(threshold)
    return t32 if float(t32) <= threshold else np.nextafter(t32, np.float32(-np.inf))


def _empty_plan(candidates: int, rejected_cooldown: int) -> EditPlan:
    return EditPlan(_NO_POSITIONS, _NO_POSITIONS, candidates, rejected_cooldown, 0, 0)


def lend_to_neighbours(levels_W: np.ndarray, utilities_W: np.ndarray, neighbours: int,
                       threshold: float) -> np.ndarray:
    """``utilities[W]`` where each level-1 gist left of a level-1 expansion candidate (up to
    ``neighbours`` of them, a contiguous run of level-1 gists) gets at least its anchor's utility,
    a hair less per step so that the anchor ranks first (``FocusConfig.expand_neighbours``)."""
    if neighbours <= 0:
        return utilities_W
    out = utilities_W.copy()
    is_l1 = levels_W == 1
    lent = np.where(is_l1 & (utilities_W > float32_below(threshold)), utilities_W, -np.inf).astype(np.float32)
    for _ in range(neighbours):  # one shift per neighbour: a loop over the knob, never over entries
        lent = np.nextafter(np.concatenate([lent[1:], [-np.inf]]).astype(np.float32), np.float32(-np.inf))
        lent = np.where(is_l1, lent, -np.inf).astype(np.float32)
        out = np.maximum(out, lent)
    return out


def _rank_keys(scores_C: np.ndarray, second_C: np.ndarray) -> np.ndarray:
    """``keys[C]`` (uint64, unique) whose ascending order is: ``second`` (0 before 1), score
    descending, candidate index ascending. Scores must be finite and >= 0 (float32)."""
    bits = scores_C.view(np.uint32).astype(np.uint64)  # order-preserving for non-negative floats
    return (
        (second_C.astype(np.uint64) << np.uint64(63))
        | ((_INF_BITS - bits) << np.uint64(32))
        | np.arange(scores_C.shape[0], dtype=np.uint64)
    )


@dataclass(frozen=True)
class _Candidates:
    """Expansion positions ``e_pos[nE]`` and collapse group starts ``c_pos[nC]`` (with their
    scores ``c_score[nC]``) that pass the thresholds, the tail and the cooldown."""

    e_pos: np.ndarray
    c_pos: np.ndarray
    c_score: np.ndarray
    considered: int  # before the cooldown
    rejected_cooldown: int


def _candidates(wc: WorkingContext, utilities_W: np.ndarray, config: FocusConfig, cooldown: CooldownTracker,
                refocus_index: int) -> _Candidates:
    K = wc.block_size
    levels_W, indices_W, ends_W = wc.levels, wc.indices, wc.ends
    tail_start = wc.num_tokens - min(config.recent_tokens, wc.num_tokens)
    gist_G = np.flatnonzero(levels_W > 0)
    gist_G = gist_G[: np.searchsorted(ends_W[gist_G], tail_start, side="right")]  # ends ascend
    e_pos = gist_G[utilities_W[gist_G] > float32_below(config.expand_threshold)]
    c_pos = wc.collapsible_starts(config.recent_tokens, config.max_level)
    if c_pos.size:
        mean_C = utilities_W[c_pos[:, None] + np.arange(K)].mean(axis=1, dtype=np.float64)
        below = mean_C < -np.float64(config.collapse_threshold)
        c_pos, c_score = c_pos[below], (-mean_C[below]).astype(np.float32)
    else:
        c_score = np.zeros(0, dtype=np.float32)
    considered = int(e_pos.size + c_pos.size)
    rejected_cooldown = 0
    if considered and len(cooldown):  # one lookup: expanded nodes, then the parents collapses would make
        blocked = cooldown.blocked(
            np.concatenate([levels_W[e_pos], levels_W[c_pos] + 1]),
            np.concatenate([indices_W[e_pos], indices_W[c_pos] // K]),
            refocus_index,
        )
        rejected_cooldown = int(np.count_nonzero(blocked))
        if rejected_cooldown:
            keep, n_e = ~blocked, e_pos.size
            e_pos = e_pos[keep[:n_e]]
            c_pos, c_score = c_pos[keep[n_e:]], c_score[keep[n_e:]]
    return _Candidates(e_pos, c_pos, c_score, considered, rejected_cooldown)


def _rank(scores_C: np.ndarray, is_collapse_C: np.ndarray, collapse_first: bool, config: FocusConfig,
          rng: np.random.Generator | None) -> np.ndarray:
    """Candidate ids ``[C]`` best first: by score (collapses first when over the target length);
    stochastic greedy re-orders the top ``sample_top_k`` by Gumbel-perturbed scores."""
    second_C = ~is_collapse_C if collapse_first else np.zeros(len(scores_C), dtype=bool)
    order = (np.sort(_rank_keys(scores_C, second_C)) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if config.type == "stochastic_greedy":
        if rng is None:
            raise ValueError("stochastic_greedy needs a numpy Generator")
        head = order[: config.sample_top_k]
        gumbel = scores_C[head].astype(np.float64) / config.sample_temperature + rng.gumbel(size=head.size)
        order = np.concatenate([head[np.lexsort((-gumbel, second_C[head]))], order[head.size :]])
    return order


def _conflicts(e_pos: np.ndarray, c_pos: np.ndarray, rank_C: np.ndarray, K: int) -> np.ndarray:
    """``drop_C[C]``: an expansion inside a collapse group and the group exclude each other; the
    better-ranked side stays (a group loses to its best-ranked member)."""
    nE, nC = e_pos.size, c_pos.size
    C = nE + nC
    drop_C = np.zeros(C, dtype=bool)
    if not (nE and nC):
        return drop_C
    rank_E, rank_G = rank_C[:nE], rank_C[nE:]
    group_E = np.searchsorted(c_pos, e_pos, side="right") - 1  # the group an expansion may sit in
    in_group = group_E >= 0
    in_group[in_group] = e_pos[in_group] < c_pos[group_E[in_group]] + K
    g_of, r_of = group_E[in_group], rank_E[in_group]
    best_member_G = np.full(nC, C, dtype=np.int64)
    np.minimum.at(best_member_G, g_of, r_of)
    g_drop = best_member_G < rank_G
    e_drop = np.zeros(nE, dtype=bool)
    e_drop[in_group] = (rank_G[g_of] < r_of) & ~g_drop[g_of]
    drop_C[:nE], drop_C[nE:] = e_drop, g_drop
    return drop_C


def _fit_budget(seq: np.ndarray, nE: int, slack: int, max_edits: int) -> tuple[list[tuple[int, int]], int, int]:
    """Take survivors ``seq`` (candidate ids in rank order) while the budget and the edit count
    allow: one walk over the runs of expansions between collapses (a collapse frees room for the
    expansions after it). ``slack`` = net expansions allowed (may be negative). Returns the
    ``[lo, hi)`` slices of ``seq`` taken, one past the last survivor reached, and how many
    expansions the budget rejected."""
    net = taken = rejected_budget = 0
    picks: list[tuple[int, int]] = []
    collapse_at = np.flatnonzero(seq >= nE)[: max_edits + 1].tolist()
    prev = 0
    for g in [*collapse_at, len(seq)]:
        run = g - prev
        if run:
            take = min(run, max(0, slack - net), max_edits - taken)
            if take:
                picks.append((prev, prev + take))
                net += take
                taken += take
            if taken == max_edits:
                return picks, prev + take, rejected_budget
            rejected_budget += run - take
        if g == len(seq):
            break
        picks.append((g, g + 1))
        net -= 1
        taken += 1
        if taken == max_edits:
            return picks, g + 1, rejected_budget
        prev = g + 1
    return picks, len(seq), rejected_budget


def select_edits(
    wc: WorkingContext,
    utilities_W: np.ndarray,
    config: FocusConfig,
    cooldown: CooldownTracker,
    refocus_index: int,
    rng: np.random.Generator | None = None,
) -> EditPlan:
    """Choose one iteration's edits for ``wc`` given ``utilities_W[W]`` (float32, finite).

    ``rng`` is required for ``stochastic_greedy``. Nothing is recorded in ``cooldown``.
    Candidates, then rank, then conflicts settled by rank, then the budget and edit count.
    """
    K = wc.block_size
    W = len(wc)
    utilities_W = lend_to_neighbours(wc.levels, utilities_W, config.expand_neighbours, config.expand_threshold)
    cand = _candidates(wc, utilities_W, config, cooldown, refocus_index)
    e_pos, c_pos = cand.e_pos, cand.c_pos
    nE, nC = int(e_pos.size), int(c_pos.size)
    C = nE + nC
    if C == 0:
        return _empty_plan(cand.considered, cand.rejected_cooldown)
    # candidate ids 0..nE-1 are expansions (by position), nE..C-1 collapses
    scores_C = np.concatenate([utilities_W[e_pos].astype(np.float32), cand.c_score])
    is_collapse_C = np.arange(C) >= nE
    order = _rank(scores_C, is_collapse_C, config.target_length < W, config, rng)
    rank_C = np.empty(C, dtype=np.int64)
    rank_C[order] = np.arange(C)
    drop_C = _conflicts(e_pos, c_pos, rank_C, K)
    seq = order[~drop_C[order]]  # survivors, in rank order
    picks, stop, rejected_budget = _fit_budget(seq, nE, (config.budget - W) // (K - 1), config.max_replacements)
    chosen = seq[np.concatenate([np.arange(lo, hi) for lo, hi in picks])] if picks else _NO_POSITIONS
    reached_rank = rank_C[seq[stop - 1]] if stop < len(seq) else C
    rejected_conflict = int(np.count_nonzero(drop_C & (rank_C < reached_rank)))
    chosen_e = chosen[chosen < nE]
    chosen_c = chosen[chosen >= nE] - nE
    return EditPlan(
        np.sort(e_pos[chosen_e]),
        np.sort(c_pos[chosen_c]),
        cand.considered,
        cand.rejected_cooldown,
        rejected_conflict,
        rejected_budget,
    )


def context_edits(wc: WorkingContext, anchors_A: np.ndarray, anchor_utilities_A: np.ndarray, config: FocusConfig,
                  cooldown: CooldownTracker, refocus_index: int) -> EditPlan:
    """The context pass that closes a refocus: expand the level-1 gists left of this refocus's
    level-1 expansions (``anchors_A``, node indices, expanded on their own utility
    ``anchor_utilities_A``), up to ``config.expand_neighbours`` per anchor (a contiguous run of
    level-1 gists), while the budget holds.

    Neighbours come after every drilling round, so they only take room that the candidates worth
    expanding on their own utility left over (D30). Ranked nearest first, then by the anchor's
    utility (highest first), then older first. The cooldown applies as to any expansion; the
    protected tail holds no gist (``FocusAllocator`` checks its input), so no neighbour lies in it.
    """
    n = config.expand_neighbours
    slack = (config.budget - len(wc)) // (wc.block_size - 1)
    if n <= 0 or anchors_A.size == 0 or slack <= 0:
        return _empty_plan(0, 0)
    l1_pos = np.flatnonzero(wc.levels == 1)
    if l1_pos.size == 0:
        return _empty_plan(0, 0)
    l1_idx = wc.indices[l1_pos]  # ascending: the WC is time-ordered
    run_A = np.ones(anchors_A.size, dtype=bool)  # the neighbours so far form a run of level-1 gists
    pos_c, dist_c, util_c = [], [], []
    for d in range(1, n + 1):  # a loop over the knob, never over entries
        want_A = anchors_A - d
        at_A = np.minimum(np.searchsorted(l1_idx, want_A), l1_idx.size - 1)
        run_A &= l1_idx[at_A] == want_A
        pos_c.append(l1_pos[at_A[run_A]])
        dist_c.append(np.full(int(run_A.sum()), d, dtype=np.int64))
        util_c.append(anchor_utilities_A[run_A].astype(np.float32))
    pos_C, dist_C, util_C = np.concatenate(pos_c), np.concatenate(dist_c), np.concatenate(util_c)
    pos_C = pos_C[np.lexsort((pos_C, -util_C, dist_C))]
    pos_C = pos_C[np.sort(np.unique(pos_C, return_index=True)[1])]  # a gist claimed twice keeps its best rank
    considered = int(pos_C.size)
    blocked_C = cooldown.blocked(wc.levels[pos_C], wc.indices[pos_C], refocus_index)
    pos_C = pos_C[~blocked_C]
    chosen = pos_C[:slack]
    return EditPlan(np.sort(chosen), _NO_POSITIONS, considered, int(blocked_C.sum()), 0, int(pos_C.size - chosen.size))
