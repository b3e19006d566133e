"""Long-context quality: truncation, uniform compression, MegaContext and full attention at one budget.

A wrapper over ``megacontext eval`` (``megacontext_plugin.evaluation``) in the benchmarks'
convention: ``python benchmarks/long_context.py [--quick] [--checkpoint PATH] [--seeds 1,2,3] --json PATH``.
Without ``--checkpoint`` it first runs ``megacontext eval train-tiny`` into a directory beside the
JSON (the full recipe; ``--quick``: a 20-step model whose numbers only show that the pipeline
runs). Each evaluation seed draws its own documents; the JSON holds every seed's result
(``per_seed``, the command's own JSON) and, per arm and length, the mean and the spread (population
standard deviation, min, max) over the seeds (``summary``). The table printed is the summary; the
PNGs are the first seed's (README, "Long-context quality").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from megacontext_plugin.cli import main as megacontext
from megacontext_plugin.evaluation.long_context import LENS_KEYS

METRICS = ("passkey_acc", "passkey_digit", "recall_acc", "nll_h", "delta_nll_h", "swap_rate", "residency", "key_raw",
           "key_raw_reachable", "key_raw_acc")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm, length): ``{metric: {"mean", "std", "min", "max"}}`` over the seeds that report it."""
    keys = [(r["arm"], r["length_x"]) for r in results[0]["rows"]]
    out = []
    for arm, x in keys:
        row: dict[str, Any] = {"arm": arm, "length_x": x}
        for m in METRICS:
            vals = [r.get(m) for res in results for r in res["rows"] if r["arm"] == arm and r["length_x"] == x]
            vals = [float(v) for v in vals if v is not None]
            row[m] = ({"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(min(vals)),
                       "max": float(max(vals)), "seeds": len(vals)} if vals else None)
        out.append(row)
    return out


def format_summary(summary: list[dict[str, Any]], lens: dict[str, list[float | None]]) -> str:
    cols = list(METRICS)
    lines = ["arm        len  " + "  ".join(f"{c:>17s}" for c in cols)]
    for row in summary:
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{'-':>17s}" if v is None else f"{v['mean']:8.3f} ± {v['std']:6.3f}")
        lines.append(f"{row['arm']:10s} {row['length_x']:>3d}x " + "  ".join(cells))
    for name, per_seed in lens.items():
        vals = [v for v in per_seed if v is not None]
        if vals:
            lines.append(f"{name}: {np.mean(vals):.3f} ± {np.std(vals):.3f} over {len(vals)} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 20-step model and few documents (pipeline check)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a tiny.pt from `megacontext eval train-tiny`")
    p.add_argument("--seeds", default="1234", help="evaluation seeds (comma list); report seeds you did not tune on")
    p.add_argument("--lengths", default=None, help="lengths as multiples of W (default 1,2,4,8,16; quick 1,2,4,8)")
    p.add_argument("--expand-neighbours", type=int, default=None, help="ablation: override the MC arm's knob")
    p.add_argument("--expand-threshold", type=float, default=None, help="ablation: override the MC arm's knob")
    p.add_argument("--collapse-threshold", type=float, default=None, help="ablation: override the MC arm's knob")
    p.add_argument("--max-replacements", type=int, default=None, help="ablation: override the MC arm's knob")
    p.add_argument("--iterations", type=int, default=None, help="ablation: override the MC arm's knob")
    p.add_argument("--arms", default=None, help="comma list of arms (default: all four)")
    p.add_argument("--json", type=Path, default=Path("bench-out/long_context.json"))
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: expected a comma list of integers, got {args.seeds!r}")
    if not seeds:
        p.error("--seeds: give at least one seed")
    ckpt = args.checkpoint
    if ckpt is None:
        out = args.json.parent / "long_context_model"
        train = ["eval", "train-tiny", "--out", str(out)]
        if args.quick:
            train += ["--plain-steps", "10", "--mc-steps", "10"]
        if megacontext(train) != 0:
            return 1
        ckpt = out / "tiny.pt"
    results = []
    for i, seed in enumerate(seeds):
        seed_json = args.json.with_name(f"{args.json.stem}_seed{seed}.json")
        cmd = ["eval", "long-context", "--checkpoint", str(ckpt), "--budget", "64", "--json", str(seed_json),
               "--seed", str(seed), "--lengths", args.lengths or ("1,2,4,8" if args.quick else "1,2,4,8,16")]
        if args.quick:
            cmd += ["--samples", "2", "--recall-docs", "2", "--lens-docs", "2"]
        if args.arms is not None:
            cmd += ["--arms", args.arms]
        for flag, value in (("--expand-neighbours", args.expand_neighbours),
                            ("--expand-threshold", args.expand_threshold),
                            ("--collapse-threshold", args.collapse_threshold),
                            ("--max-replacements", args.max_replacements),
                            ("--iterations", args.iterations)):
            if value is not None:
                cmd += [flag, str(value)]
        if i == 0 and args.png is not None:
            cmd += ["--png", str(args.png)]
        if megacontext(cmd) != 0:
            return 1
        results.append(json.loads(seed_json.read_text()))
    summary = summarise(results)
    lens = {key: [r.get(key) for r in results] for key in LENS_KEYS.values()}
    print()
    print(f"summary over seeds {seeds} (mean ± population std)")
    print(format_summary(summary, lens))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seeds": seeds, "checkpoint": str(ckpt), "summary": summary, **lens,
                                     "per_seed": results}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
