"""Focus allocator bookkeeping time vs working-context size.

    python benchmarks/allocator.py [--quick] --json PATH

For each WC size W (512 .. 32k entries, K = 32) a WC over a history of 64 * W tokens starts in
the recency layout and is mixed by warm-up refocuses, then ``refocus`` is timed with a scorer
that returns precomputed random utilities (so only the allocator's bookkeeping is measured:
candidates, ranking, conflicts, budget, the vectorised edit, cooldown). Defaults of the knobs
(``max_replacements`` 8, one iteration, cooldown 2, protected tail 64); budget = W. The
target is well under 1 ms at 8k entries.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, plot_lines, png_path, print_table, write_json

from megacontext_plugin.context import WorkingContext
from megacontext_plugin.focus import FocusAllocator, FocusConfig

SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
BLOCK_SIZE = 32
HISTORY_PER_ENTRY = 64
RECENT_TOKENS = 64
TARGET_MS = 1.0


def time_refocus(size: int, kind: str, repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    """Median/p90 bookkeeping ms of ``repeats`` refocus calls at WC size ``size``."""
    rng = np.random.default_rng(seed)
    wc = WorkingContext.recency(size * HISTORY_PER_ENTRY, size, BLOCK_SIZE, recent_tokens=RECENT_TOKENS)
    allocator = FocusAllocator(FocusConfig(budget=size, type=kind, recent_tokens=RECENT_TOKENS, seed=seed))  # type: ignore[arg-type]
    pools = rng.uniform(-1.0, 1.0, size=(warmup + repeats, size)).astype(np.float32)
    times_ms: list[float] = []
    wall_ms: list[float] = []
    edits = 0
    gc.disable()
    try:
        for step, pool in enumerate(pools):
            t0 = time.perf_counter()
            wc, report = allocator.refocus(wc, lambda w, pool=pool: pool[: len(w)])
            elapsed_ms = (time.perf_counter() - t0) * 1e3
            if step >= warmup:
                times_ms.append(report.bookkeeping_ms)
                wall_ms.append(elapsed_ms)
                edits += report.expands + report.collapses
    finally:
        gc.enable()
    wc.validate(recent_tokens=RECENT_TOKENS, budget=size)
    levels = np.bincount(wc.levels.astype(np.int64))
    return {
        "median_ms": statistics.median(times_ms),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "wall_median_ms": statistics.median(wall_ms),
        "edits_per_refocus": edits / repeats,
        "final_length": len(wc),
        "entries_per_level": [int(c) for c in levels],
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats, warmup = (60, 20) if args.quick else (400, 50)
    rows = []
    for size in SIZES:
        greedy = time_refocus(size, "greedy", repeats, warmup, args.seed)
        stochastic = time_refocus(size, "stochastic_greedy", repeats, warmup, args.seed)
        rows.append(
            {
                "wc_size": size,
                "refocus_ms": greedy["median_ms"],
                "refocus_p90_ms": greedy["p90_ms"],
                "refocus_wall_ms": greedy["wall_median_ms"],
                "stochastic_refocus_ms": stochastic["median_ms"],
                "stochastic_edits_per_refocus": stochastic["edits_per_refocus"],
                "edits_per_refocus": greedy["edits_per_refocus"],
                "final_length": greedy["final_length"],
                "entries_per_level": greedy["entries_per_level"],
            }
        )
    print(f"refocus bookkeeping (median of {repeats}), K={BLOCK_SIZE}, history = {HISTORY_PER_ENTRY} x W tokens")
    print_table(
        rows,
        [
            "wc_size",
            "refocus_ms",
            "refocus_p90_ms",
            "refocus_wall_ms",
            "stochastic_refocus_ms",
            "edits_per_refocus",
            "stochastic_edits_per_refocus",
            "final_length",
        ],
    )
    at_8k = next(row["refocus_ms"] for row in rows if row["wc_size"] == 8192)
    print(f"8k entries: {at_8k:.3f} ms ({'meets' if at_8k < TARGET_MS else 'MISSES'} the < {TARGET_MS} ms target)")
    write_json(
        args.json,
        {
            "benchmark": "allocator",
            "quick": args.quick,
            "block_size": BLOCK_SIZE,
            "history_per_entry": HISTORY_PER_ENTRY,
            "recent_tokens": RECENT_TOKENS,
            "repeats": repeats,
            "target_ms_at_8k": TARGET_MS,
            "rows": rows,
        },
    )
    plot_lines(
        png_path(args, "allocator.png"),
        {
            "greedy": ([r["wc_size"] for r in rows], [r["refocus_ms"] for r in rows]),
            "stochastic_greedy": ([r["wc_size"] for r in rows], [r["stochastic_refocus_ms"] for r in rows]),
        },
        title=f"Focus allocator refocus bookkeeping (K={BLOCK_SIZE}, median)",
        xlabel="working-context entries W",
        ylabel="ms per refocus",
        logx=True,
        logy=True,
        hline=(TARGET_MS, "1 ms target (at 8k)"),
    )


if __name__ == "__main__":
    main()
