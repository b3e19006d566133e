"""The shape events a chat session emits when it touches the tree, the working context and the
allocator (``mc_tree_snapshot``, ``working_context_snapshot``, ``focus_allocator``), as a
training run does: shapes, levels, counts, scores and timings, never text or token ids.

A session emits them on every ``--mc_inference_telemetry_every``-th refocus (each prompt ends
with one, so a prompt's appends are in its snapshot; tokens generated since the previous
snapshot are its ``append_tokens``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..context.working_context import WorkingContext
from ..focus import residency
from ..telemetry import FOCUS_ALLOCATOR, MC_TREE_SNAPSHOT, WORKING_CONTEXT_SNAPSHOT
from ..tree import MCTree
from .refocus import Refocused


def tree_snapshot(tree: MCTree, appended: int) -> dict[str, Any]:
    levels = tree.num_levels
    return {"tokens_total": tree.num_tokens, "num_levels": levels,
            "nodes_per_level": [tree.level_size(level) for level in range(levels)],
            "block_size": tree.block_size, "append_tokens": appended, "trees": 1}


def wc_snapshot(wc: WorkingContext, budget: int, recent_tokens: int, num_levels: int) -> dict[str, Any]:
    hist = np.bincount(wc.levels.astype(np.int64), minlength=num_levels)
    return {"wc_entries": len(wc), "wc_tokens": wc.num_tokens, "w_max": budget,
            "level_histogram": hist.tolist(), "span_start": 0, "span_end": wc.num_tokens,
            "recent_tokens": recent_tokens, "layout": "refocused"}


def focus_snapshot(before: WorkingContext, done: Refocused, budget: int) -> dict[str, Any]:
    r = done.report
    s = done.scores.astype(np.float64)
    attrs: dict[str, Any] = {
        "expands": r.expands, "collapses": r.collapses + done.forced_collapses,
        "edits": r.expands + r.collapses + done.forced_collapses,
        "swap_rate": min(1.0, replaced(before, done) / max(1, len(before))),
        "residency": residency(before, done.wc), "budget": budget, "wc_entries_before": len(before),
        "wc_entries": len(done.wc), "iterations": r.iterations, "candidates": r.candidates,
        "utilisation": min(1.0, len(done.wc) / budget), "allocator_ms": r.total_ms}
    if s.size:
        attrs |= {"score_mean": float(s.mean()), "score_std": float(s.std()), "score_min": float(s.min()),
                  "score_max": float(s.max()), "score_p95": float(np.quantile(s, 0.95))}
    return attrs


def replaced(before: WorkingContext, done: Refocused) -> float:
    """Entries replaced: the allocator's own count, plus ``K`` per collapse made to free room."""
    return done.report.swap_rate * done.report.length_before + done.forced_collapses * before.block_size


def session_snapshots(tree: MCTree, before: WorkingContext, done: Refocused, *, budget: int, recent_tokens: int,
                      appended: int) -> list[tuple[str, dict[str, Any]]]:
    """The three events of one refocus, in order: the tree, the working context after it, the pass."""
    return [(MC_TREE_SNAPSHOT, tree_snapshot(tree, appended)),
            (WORKING_CONTEXT_SNAPSHOT, wc_snapshot(done.wc, budget, recent_tokens, tree.num_levels)),
            (FOCUS_ALLOCATOR, focus_snapshot(before, done, budget))]
