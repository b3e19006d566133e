"""The working context's level map: which spans of the history the model sees raw, which as gists.

``level_map(wc)`` is a small JSON-able dict (a web UI can draw it), ``render_level_map(wc)`` the
same as two lines of text for a terminal. Both carry spans, levels and counts only, never token
ids or text (the telemetry privacy rule).

The bar has one character per equal slice of the history (oldest left): ``.`` = the slice is
seen as raw tokens, ``1``-``9`` = as a gist of that level (``+`` above 9); each slice shows the
entry covering its middle token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..context import WorkingContext

RAW_CHAR = "."


def level_runs(wc: WorkingContext) -> list[dict[str, int]]:
    """Maximal runs of consecutive entries of one level: ``{"level", "entries", "start", "end"}``
    (``[start, end)`` in tokens), oldest first."""
    W = len(wc)
    if W == 0:
        return []
    levels_W = wc.levels
    first_R = np.flatnonzero(np.concatenate([[True], levels_W[1:] != levels_W[:-1]]))
    last_R = np.concatenate([first_R[1:], [W]]) - 1
    return [
        {"level": int(lv), "entries": int(n), "start": int(s), "end": int(e)}
        for lv, n, s, e in zip(levels_W[first_R].tolist(), (last_R - first_R + 1).tolist(),
                               wc.starts[first_R].tolist(), wc.ends[last_R].tolist(), strict=True)
    ]


def level_bar(wc: WorkingContext, width: int = 64) -> str:
    """``width`` characters (fewer for a shorter history), one per equal slice of the tokens."""
    N = wc.num_tokens
    if N == 0 or width < 1:
        return ""
    cells = min(width, N)
    mid_B = ((np.arange(cells, dtype=np.float64) + 0.5) * (N / cells)).astype(np.int64)
    entry_B = np.searchsorted(wc.ends, mid_B, side="right")
    level_B = wc.levels[entry_B]
    chars = np.array([RAW_CHAR, *"123456789", "+"])
    return "".join(chars[np.minimum(level_B, 10)].tolist())


def level_map(wc: WorkingContext, budget: int | None = None, width: int = 64) -> dict[str, Any]:
    """Everything a UI needs to show the working context of the current answer (JSON-able)."""
    levels_W = wc.levels.astype(np.int64)
    top = int(levels_W.max()) + 1 if len(wc) else 0
    entries_L = np.bincount(levels_W, minlength=top)
    tokens_L = np.bincount(levels_W, weights=wc.widths, minlength=top).astype(np.int64)
    return {
        "num_tokens": wc.num_tokens,
        "entries": len(wc),
        "budget": budget,
        "block_size": wc.block_size,
        "entries_per_level": entries_L.tolist(),
        "tokens_per_level": tokens_L.tolist(),
        "runs": level_runs(wc),
        "bar": level_bar(wc, width),
    }


def render_level_map(wc: WorkingContext, budget: int | None = None, width: int = 64) -> str:
    """Two lines: a summary (tokens, entries, per level) and the bar."""
    m = level_map(wc, budget, width)
    parts = [f"L{k}: {e} {'raw' if k == 0 else 'gists'} ({t} tok)"
             for k, (e, t) in enumerate(zip(m["entries_per_level"], m["tokens_per_level"], strict=True)) if e]
    of_budget = f"/{budget}" if budget else ""
    head = f"{m['num_tokens']} tokens in {m['entries']}{of_budget} entries | " + ", ".join(parts)
    return f"{head}\n[{m['bar']}]"
