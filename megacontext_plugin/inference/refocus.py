"""A session's refocus policy: LensNet's scores, making room when the context is full, the allocator.

At a refocus LensNet scores every WC entry against the last ``horizon`` tokens, then:

1. *make room* (only when the next ``refocus_every`` tokens would not fit in the budget):
   ``room.make_room`` collapses sibling groups until at most ``budget - headroom`` entries remain
   (LensNet's cheap groups first, its wanted ones and those in cooldown last; otherwise oldest first
   at a prompt, the answer's own tokens behind the protected tail during an answer: D21). The
   forced collapses enter the allocator's cooldown, so it cannot expand them back at once;
2. the focus allocator (``focus.FocusAllocator``) expands and collapses by LensNet's utilities
   within ``budget - refocus_every`` entries (thresholds, cooldown, protected tail).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..context import WorkingContext, lens_utilities
from ..focus import FocusAllocator, FocusReport, score_through_view
from .records import SessionStats
from .room import make_room
from .settings import SessionSettings


@dataclass(frozen=True)
class Refocused:
    """The outcome of one refocus: the new working context and what it took."""

    wc: WorkingContext
    expands: int
    collapses: int
    forced_collapses: int
    lens_ms: float
    report: FocusReport
    """The allocator's account of its pass (after any room-making collapses)."""
    scores: np.ndarray
    """LensNet utilities of the starting working context's entries."""


class Refocuser:
    """LensNet and the focus allocator of one session (the cooldown lives in the allocator)."""

    def __init__(self, lensnet: nn.Module, settings: SessionSettings, stats: SessionStats, *,
                 aux_dtype: torch.dtype) -> None:
        self.lensnet, self.settings, self.stats = lensnet, settings, stats
        self.aux_dtype = aux_dtype
        self.allocator = FocusAllocator(settings.focus)

    def restart(self, tail: int) -> None:
        """A fresh allocator (no cooldowns, its seed's randomness) that protects the last ``tail`` tokens:
        a prompt's start layout may protect fewer than the session's tail (``focus.fitted_tail``)."""
        self.allocator = FocusAllocator(dataclasses.replace(self.settings.focus, recent_tokens=tail))

    def score(self, wc: WorkingContext, tail_HD: torch.Tensor,
              embeddings_of: Callable[[WorkingContext], torch.Tensor], x_WD: torch.Tensor | None = None
              ) -> np.ndarray:
        """LensNet utilities ``[W]`` (float32 numpy) of ``wc``'s entries against the tail, through its
        ``focus.lens_view`` (a gist coarser than LensNet trained on is scored by its descendants).
        ``x_WD``: ``wc``'s entries when the caller has them; otherwise ``embeddings_of`` gives them."""
        query_1HD = tail_HD[None].to(self.aux_dtype)

        def utilities(view: WorkingContext) -> np.ndarray:
            x_VD = x_WD if view is wc and x_WD is not None else embeddings_of(view)
            self.stats.lens_calls += 1
            return lens_utilities(self.lensnet, [view], query_1HD, entries_RWD=x_VD[None])[0]

        return score_through_view(utilities, self.settings.lens_level)(wc)

    def refocus(self, wc: WorkingContext, x_WD: torch.Tensor,
                embeddings_of: Callable[[WorkingContext], torch.Tensor], answer_from: int | None,
                tail_HD: torch.Tensor) -> Refocused:
        """Refocus ``wc`` (entries ``x[W, D]``); ``embeddings_of`` gives the entries of a candidate
        the allocator proposes; ``answer_from`` is the first token of the answer being generated
        (None at a prompt), which making room collapses first; ``tail_HD``: the raw embeddings of the
        history's last H tokens, LensNet's query (from the tree: the protected tail may be shorter)."""
        s = self.settings
        t0 = time.perf_counter()
        W = len(wc)
        scores = self.score(wc, tail_HD, embeddings_of, x_WD)
        lens_s = time.perf_counter() - t0
        start, start_scores, forced = wc, scores, 0  # what the allocator starts from
        if W + s.refocus_every > s.budget:
            now = self.allocator.refocus_count
            cooldown = self.allocator.cooldown_tracker
            start, start_scores, levels, indices = make_room(
                wc, scores, s.budget - s.headroom, s.protected, s.max_level, s.focus.collapse_threshold, cooldown,
                now, answer_from, s.lens_level)
            cooldown.record(levels, indices, now)  # the allocator may not undo them at once
            forced = int(levels.size)

        def scorer(candidate: WorkingContext) -> np.ndarray:
            nonlocal lens_s
            if candidate is start:
                return start_scores
            t = time.perf_counter()
            utilities = self.score(candidate, tail_HD, embeddings_of)
            lens_s += time.perf_counter() - t
            return utilities

        refocused, report = self.allocator.refocus(start, scorer)
        st = self.stats
        st.refocuses += 1
        st.expands += report.expands
        st.collapses += report.collapses
        st.forced_collapses += forced
        return Refocused(refocused, report.expands, report.collapses, forced, lens_s * 1e3, report, scores)
