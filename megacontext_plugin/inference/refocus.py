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

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..context import WorkingContext
from ..focus import FocusAllocator, FocusReport, lens_view, pool_view
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
                 aux_dtype: torch.dtype, device: torch.device) -> None:
        self.lensnet, self.settings, self.stats = lensnet, settings, stats
        self.aux_dtype, self.device = aux_dtype, device
        self.allocator = FocusAllocator(settings.focus)

    def score(self, wc: WorkingContext, tail_HD: torch.Tensor,
              embeddings_of: Callable[[WorkingContext], torch.Tensor], x_WD: torch.Tensor | None = None
              ) -> np.ndarray:
        """LensNet utilities ``[W]`` (float32 numpy) of ``wc``'s entries against the tail, through its
        ``focus.lens_view`` (a gist coarser than LensNet trained on is scored by its descendants).
        ``x_WD``: ``wc``'s entries when the caller has them; otherwise ``embeddings_of`` gives them."""
        view = lens_view(wc, self.settings.lens_level)
        x_VD = x_WD if view is wc and x_WD is not None else embeddings_of(view)
        levels = torch.from_numpy(view.levels.astype(np.int64)).to(self.device)[None]
        spans = torch.from_numpy(view.widths).to(self.device)[None]
        scores_1V = self.lensnet(x_VD[None].to(self.aux_dtype), levels, spans, tail_HD[None].to(self.aux_dtype))
        self.stats.lens_calls += 1
        return pool_view(wc, view, scores_1V[0].float().cpu().numpy())

    def refocus(self, wc0: WorkingContext, x_WD: torch.Tensor,
                embeddings_of: Callable[[WorkingContext], torch.Tensor], answer_from: int | None) -> Refocused:
        """Refocus ``wc0`` (entries ``x[W, D]``); ``embeddings_of`` gives the entries of a candidate
        the allocator proposes; ``answer_from`` is the first token of the answer being generated
        (None at a prompt), which making room collapses first."""
        s = self.settings
        t0 = time.perf_counter()
        W0 = len(wc0)
        tail_HD = x_WD[W0 - min(s.horizon, W0):W0]  # the protected tail is raw: these are the last H tokens
        u0 = self.score(wc0, tail_HD, embeddings_of, x_WD)
        lens_s = time.perf_counter() - t0
        wc1, u1, forced = wc0, u0, 0
        if W0 + s.refocus_every > s.budget:
            now = self.allocator.refocus_count
            cooldown = self.allocator.cooldown_tracker
            wc1, u1, lv, ix = make_room(wc0, u0, s.budget - s.headroom, s.protected, s.max_level,
                                        s.focus.collapse_threshold, cooldown, now, answer_from, s.lens_level)
            cooldown.record(lv, ix, now)  # the allocator may not undo them at once
            forced = int(lv.size)

        def scorer(wc: WorkingContext) -> np.ndarray:
            nonlocal lens_s
            if wc is wc1:
                return u1
            t = time.perf_counter()
            u = self.score(wc, tail_HD, embeddings_of)
            lens_s += time.perf_counter() - t
            return u

        wc2, report = self.allocator.refocus(wc1, scorer)
        st = self.stats
        st.refocuses += 1
        st.expands += report.expands
        st.collapses += report.collapses
        st.forced_collapses += forced
        return Refocused(wc2, report.expands, report.collapses, forced, lens_s * 1e3, report, u0)
