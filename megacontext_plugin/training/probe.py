"""The focus probe: swap rate and residency, measured honestly during training.

Training refocuses only to lay out its on-policy variants, from the coarsest working context.
"Swap rate" and "residency" during training are defined by what the allocator does with the
LensNet being trained, from the recency working context. At the telemetry cadence, on the prompt
of one sequence of the micro-batch (the first; the prompt is everything before the horizon H):

1. its tree (GistNet, no grad) and the **recency working context** at the step's curriculum
   budget ``W`` (``WorkingContext.recency``: the longest raw suffix that fits, older history in
   the fewest aligned gists, the prompt's tail ``max(--allocator_recent_tokens, H)`` raw);
2. one refocus by a fresh ``FocusAllocator`` with the run's ``--allocator_*`` knobs (budget
   ``W``), scored by LensNet against the prompt's last H tokens, as in training and inference;
3. **swap rate** = entries replaced / entries before (``FocusReport.swap_rate``: an expansion
   replaces 1 entry, a collapse ``K``); **residency** = share of the entries before the refocus
   (same node, same level) still present after it. LensNet's scores of the starting WC give the
   score statistics.

A probe changes nothing in training: it runs under ``no_grad``, touches no optimizer, EMA or
random generator of the run, and its FLOPs are not counted in MFU (it is telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..context import LevelTable, WorkingContext, lens_utilities
from ..focus import FocusAllocator, FocusReport, focus_config, residency, score_through_view
from ..tree.building import build_levels
from .timing import Timings


@dataclass(frozen=True)
class FocusProbe:
    """One probe's result (see the module docstring)."""

    report: FocusReport
    before: WorkingContext
    after: WorkingContext
    budget: int
    residency: float
    scores: np.ndarray
    """LensNet utilities of the starting WC's entries (float32)."""
    probe_ms: float

    @property
    def swap_rate(self) -> float:
        return self.report.swap_rate

    def score_stats(self) -> dict[str, float]:
        s = self.scores.astype(np.float64)
        if s.size == 0:
            return {}
        return {"score_mean": float(s.mean()), "score_std": float(s.std()), "score_min": float(s.min()),
                "score_max": float(s.max()), "score_p95": float(np.quantile(s, 0.95))}


@torch.no_grad()
def probe_focus(controller: nn.Module, ids_T: torch.Tensor, wte: nn.Module, budget: int) -> FocusProbe | None:
    """Refocus the recency WC of one sequence ``ids_T`` at ``budget`` (see the module docstring).

    ``controller`` is the run's ``MCController``. Returns None when the sequence is too short for
    any gist (nothing to refocus).
    """
    timings = Timings()
    with timings.phase("probe"):
        cfg = controller.cfg
        K, H = cfg.block_size, cfg.mc_horizon
        if not controller.can_compress(int(ids_T.shape[-1])):
            return None
        num_levels = controller.length_plan(int(ids_T.shape[-1])).num_levels
        T = int(ids_T.shape[-1]) - H  # the prompt: what comes before the horizon
        ids_T = ids_T.reshape(-1)[:T]
        aux = controller.aux_dtype
        lod0_1TD = wte(ids_T.reshape(1, T)).to(aux)
        levels = build_levels(lod0_1TD, K, controller.gistnet, max_level=num_levels - 1)
        table = LevelTable(levels, ids_T.reshape(1, T))
        tail_1HD = lod0_1TD[:, T - H:]
        lens = score_through_view(  # as inference scores
            lambda wc: lens_utilities(controller.lensnet, [wc], tail_1HD, source=table)[0], controller.lens_level)
        before = WorkingContext.recency(T, budget, K, controller.prompt_recent, max_level=num_levels - 1)
        scores = lens(before)
        first = [scores]

        def scorer(wc: WorkingContext) -> np.ndarray:
            if first:  # the starting WC was just scored: reuse it
                return first.pop()
            return lens(wc)

        allocator = FocusAllocator(focus_config(cfg, budget, recent_tokens=controller.prompt_recent,
                                                max_level=max(1, num_levels - 1)))
        after, report = allocator.refocus(before, scorer)
        moved = residency(before, after)
    return FocusProbe(report, before, after, budget, moved, scores, timings.ms["probe_ms"])
