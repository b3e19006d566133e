"""Where refocus starts on a prompt, and how LensNet sees gists coarser than any it trained on.

Refocus starts from the coarsest layout of the prompt (its protected tail raw): the cheapest
tiling, so the most room to open what matters. LensNet trained on the layouts of training prompts,
whose coarsest gists are of ``trained_level``; a gist above that level holds more history in one
vector than any it scored, and LensNet scores it like the filler around it whatever it holds
(D26). So LensNet scores a working context through its **lens view**: every gist above the trained
level replaced by its descendants at that level, each entry's utility the largest of the view
entries it covers. A coarse gist is then worth opening exactly when one of its descendants is,
and the start costs coarse gists' entries only (D29).

The allocator reads LensNet's utilities **relative to the working context's median gist**:
LensNet's distillation fixes the gaps between its scores, not their level, which differs from run
to run, so an absolute expand threshold meant something else in every run; relative to the
typical gist, the threshold reads "stands out from the gists around it by more than t" (D31). Raw
entries are read against the same reference, so a collapse threshold means "falls below the
typical gist by more than t" in every run, and an open island is not closed because its run's
LensNet scores raw tokens low in absolute terms (D33).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..context.working_context import WorkingContext


def trained_level(sequence_len: int, horizon: int, block_size: int, prompt_tail: int) -> int:
    """The coarsest gist level LensNet learns to score in a run at ``sequence_len``: that of the
    coarsest layout of the longest training prompt (``sequence_len - horizon`` tokens, the last
    ``prompt_tail`` raw), where on-policy and teacher variants start; at least 1."""
    prompt = max(0, sequence_len - horizon)
    return max(1, int(WorkingContext.coarsest(prompt, block_size, prompt_tail).levels.max(initial=0)))


PROMPT_ROUNDS = 4
"""Refocus calls from ``start_layout`` at a prompt (the evaluation's ``mc`` arm and a chat session's):
each call is up to ``--allocator_iterations`` rounds and opens at most ``--allocator_max_replacements``
gists per round, so one call cannot drill from the coarsest level to a raw key."""


def start_layout(num_tokens: int, block_size: int, recent_tokens: int) -> WorkingContext:
    """The layout refocus starts from, in training's guided variants, the evaluation's ``mc`` arm
    and its lens measures, and a chat session at each prompt: the coarsest of ``num_tokens`` with the
    last ``recent_tokens`` raw."""
    return WorkingContext.coarsest(num_tokens, block_size, recent_tokens)


def fitted_tail(num_tokens: int, block_size: int, tail: int, room: int) -> int:
    """The protected tail of a prompt of ``num_tokens`` refocused within ``room`` entries: ``tail``, halved
    (never below one block) while its coarsest layout leaves less room than one island drilled from that
    layout's top level down to raw tokens, ``block_size - 1`` entries per level. A long history's coarsest
    layout grows by a block's worth of gists per level, and a fixed tail then leaves LensNet no room to open
    anything (D55); where the room suffices the tail is the run's own. Only the tree's geometry decides it."""
    while tail // 2 >= block_size:
        wc = WorkingContext.coarsest(num_tokens, block_size, tail)
        if len(wc) + int(wc.levels.max(initial=0)) * (block_size - 1) <= room:
            break
        tail //= 2
    return tail


def lens_view(wc: WorkingContext, level: int | None) -> WorkingContext:
    """``wc`` with every gist above ``level`` expanded down to ``level`` (None: none is), and a lone
    gist (the view's only one, above level 1) opened until the view holds two or more: the allocator
    reads utilities relative to the typical gist, and one gist alone has none to stand out from
    (D44). Its length is not bounded by a budget: only LensNet reads it."""
    view = wc
    if level is not None:
        while (coarse := np.flatnonzero(view.levels > level)).size:
            view = view.expand(coarse)
    while (gists := np.flatnonzero(view.levels > 0)).size == 1 and view.levels[gists[0]] > 1:
        view = view.expand(gists)
    return view


def relative_to_median_gist(wc: WorkingContext, utilities_W: np.ndarray, values: np.ndarray | None = None
                            ) -> np.ndarray:
    """``utilities[W]`` with every entry's utility, raw or gist, minus the median utility of
    ``wc``'s gists, clipped to [-1, 1]; unchanged when ``wc`` holds no gist (D31, D33). ``values``
    (another layout's utilities) are what is read against ``wc``'s median instead, when given."""
    u_W = np.asarray(utilities_W, dtype=np.float32)
    out = (u_W if values is None else np.asarray(values, dtype=np.float32)).copy()
    gist_W = wc.levels > 0
    if gist_W.any():
        out = np.clip(out - np.median(u_W[gist_W]), -1.0, 1.0)
    return out


def pool_view(wc: WorkingContext, view: WorkingContext, view_utilities: np.ndarray) -> np.ndarray:
    """``utilities[W]`` of ``wc`` from ``view_utilities[V]`` of its ``lens_view``: each entry's
    largest over the view entries it covers (its own where the view holds it unchanged), then
    every entry read relative to the median gist (``relative_to_median_gist``): ``wc``'s gists,
    or the view's where ``wc`` holds fewer than two (D44). What the allocator acts on."""
    u_V = np.asarray(view_utilities, dtype=np.float32)
    if view is wc:
        return relative_to_median_gist(wc, u_V)
    first_W = np.searchsorted(view.starts, wc.starts)  # both tile [0, N) in order
    pooled_W = np.maximum.reduceat(u_V, first_W)
    if int((wc.levels > 0).sum()) >= 2:
        return relative_to_median_gist(wc, pooled_W)
    return relative_to_median_gist(view, u_V, pooled_W)


def score_through_view(score: Callable[[WorkingContext], np.ndarray], level: int | None
                       ) -> Callable[[WorkingContext], np.ndarray]:
    """A scorer of working contexts that scores each one's ``lens_view`` with ``score``."""

    def scorer(wc: WorkingContext) -> np.ndarray:
        view = lens_view(wc, level)
        return pool_view(wc, view, score(view))

    return scorer


def score_batch_through_view(score: Callable[[list[WorkingContext]], Sequence[np.ndarray]], level: int | None
                             ) -> Callable[[list[WorkingContext]], list[np.ndarray]]:
    """``score_through_view`` for a scorer of one working context per sequence, scored in one call."""

    def scorer(wcs: list[WorkingContext]) -> list[np.ndarray]:
        views = [lens_view(wc, level) for wc in wcs]
        return [pool_view(wc, v, u) for wc, v, u in zip(wcs, views, score(views), strict=True)]

    return scorer
