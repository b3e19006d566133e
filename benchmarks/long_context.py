"""Long-context quality: truncation, uniform compression, MegaContext and full attention at one budget.

A wrapper over ``megacontext eval`` (``megacontext_plugin.evaluation``) in the benchmarks'
convention: ``python benchmarks/long_context.py [--quick] [--checkpoint PATH] [--seeds 1,2,3] --json PATH``.
Without ``--checkpoint`` it first runs ``megacontext eval train-tiny`` into a directory beside the
JSON (the full recipe; ``--quick``: a 20-step model whose numbers only show that the pipeline
runs). Each evaluation seed draws its own documents; the JSON holds every seed's result
(``per_seed``, the command's own JSON) and, per arm and length, the mean and the spread (population
standard deviation, min, max) over the seeds (``summary``). The table printed is the summary; the
PNGs are the first seed's (README, "Long-context quality").

``--checkpoint`` repeated evaluates several training runs of one recipe (other ``--seed`` of
``train-tiny``) on the same documents: each run's result is in ``runs``, and ``across_runs`` holds
the mean and spread over the runs of each run's mean (a seed's luck in training is then part of
the number, as it is for a user who trains once). Every result checks issue 11's targets per run
(``targets``), met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import plot_lines, seed_list

from megacontext_plugin.cli import main as megacontext
from megacontext_plugin.evaluation.scoring import LENS_KEYS

METRICS = ("passkey_acc", "passkey_digit", "recall_acc", "nll_h", "delta_nll_h", "swap_rate", "residency", "key_raw",
           "key_raw_reachable", "key_raw_acc", "tail")

TARGETS: tuple[tuple[str, str, int, str, str, float], ...] = (
    ("passkey exact, mc 8x", "mc", 8, "passkey_acc", ">=", 0.90),
    ("passkey exact, mc 16x", "mc", 16, "passkey_acc", ">=", 0.75),
    ("ΔNLL@H vs full, mc 4x", "mc", 4, "delta_nll_h", "<=", 0.10),
    ("ΔNLL@H vs full, mc 8x", "mc", 8, "delta_nll_h", "<=", 0.10),
    ("passkey exact, mc - uniform 8x", "mc-uniform", 8, "passkey_acc", ">=", 0.50),
    ("key_raw_reachable - key_raw, mc 8x", "mc-reach", 8, "key_raw", "<=", 0.03),
    ("key_raw_reachable - key_raw, mc 16x", "mc-reach", 16, "key_raw", "<=", 0.03),
)
"""The tiny recipe's targets: (name, arm, length x, metric, op, threshold), read from a run's summary
means; arm ``mc-uniform`` is the difference of the two arms, ``mc-reach`` the MC arm's
``key_raw_reachable`` minus its ``key_raw`` (the lens finds what the budget can hold). LensNet's rank
correlation is reported beside its references, not a target (D32 shows it out of reach as defined). A
target whose cell a run does not report is null, not met."""


FURTHER_TARGETS: tuple[tuple[str, str, int, str, str, float], ...] = (
    ("passkey exact, mc 8x (further)", "mc", 8, "passkey_acc", ">=", 0.97),
    ("passkey exact, mc 16x (further)", "mc", 16, "passkey_acc", ">=", 0.90),
    ("passkey exact, mc 32x", "mc", 32, "passkey_acc", ">=", 0.90),
    ("passkey exact, mc 64x", "mc", 64, "passkey_acc", ">=", 0.75),
)
"""Issue 27's further targets for the stand-in (``--lengths 8,16,32,64``); ``key_raw_reachable`` is reported
beside each length in the summary, since beyond 16x the budget, not the lens, bounds the MC arm."""


TOLERANCE = 1e-9
"""A target's threshold is met within this (means of document fractions are not exact in floating point)."""


def spread(vals: list[float], unit: str) -> dict[str, float] | None:
    """``{mean, std (population), min, max, UNIT: count}`` of ``vals``, None when there are none."""
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(min(vals)),
            "max": float(max(vals)), unit: len(vals)}


def summarise(results: list[dict[str, Any]], unit: str = "seeds") -> list[dict[str, Any]]:
    """Per (arm, length) of ``results[i]["rows"]``: ``{metric: {"mean", "std", "min", "max", UNIT}}`` over
    the results that report it (the seeds of one run, or the runs' means: ``run_means``)."""
    keys = [(r["arm"], r["length_x"]) for r in results[0]["rows"]]
    out = []
    for arm, x in keys:
        row: dict[str, Any] = {"arm": arm, "length_x": x}
        for m in METRICS:
            vals = [r.get(m) for res in results for r in res["rows"] if r["arm"] == arm and r["length_x"] == x]
            vals = [float(v) for v in vals if v is not None]
            row[m] = spread(vals, unit)
        out.append(row)
    return out


def _run_mean(summary: list[dict[str, Any]], arm: str, x: int, metric: str) -> float | None:
    cell = next((r[metric] for r in summary if r["arm"] == arm and r["length_x"] == x), None)
    return None if cell is None else float(cell["mean"])


def lens_mean(run: dict[str, Any], key: str) -> float | None:
    """One run's mean over its seeds of the ``LENS_KEYS`` value ``key`` (None where no seed reports it)."""
    vals = [float(v) for v in run.get(key) or () if v is not None]
    return float(np.mean(vals)) if vals else None


def target_value(run: dict[str, Any], arm: str, x: int, metric: str) -> float | None:
    """One run's value for a ``TARGETS`` entry (``run``: ``summary`` and the ``LENS_KEYS`` lists)."""
    if arm == "lens":
        mean = lens_mean(run, metric)
        return None if mean is None else abs(mean)
    if arm == "mc-reach":
        reach, raw = _run_mean(run["summary"], "mc", x, "key_raw_reachable"), _run_mean(run["summary"], "mc", x, metric)
        return None if reach is None or raw is None else reach - raw
    if arm == "mc-uniform":
        mc, uniform = _run_mean(run["summary"], "mc", x, metric), _run_mean(run["summary"], "uniform", x, metric)
        return None if mc is None or uniform is None else mc - uniform
    return _run_mean(run["summary"], arm, x, metric)


def check_targets(runs: list[dict[str, Any]], targets: tuple[tuple[str, str, int, str, str, float], ...] = TARGETS
                  ) -> list[dict[str, Any]]:
    """Per ``targets`` entry: each run's value and whether it meets the threshold (null: not reported)."""
    out = []
    for name, arm, x, metric, op, threshold in targets:
        values = [target_value(run, arm, x, metric) for run in runs]
        # the mean of 0.95, 0.85 and 0.9 is 0.8999999999999999 in floating point: at the target is met
        met = [v is not None and (v >= threshold - TOLERANCE if op == ">=" else v <= threshold + TOLERANCE)
               for v in values]
        out.append({"target": name, "op": op, "threshold": threshold, "values": values, "met": met,
                    "met_runs": sum(met), "runs": len(runs)})
    return out


def run_means(run: dict[str, Any]) -> dict[str, Any]:
    """A run's ``summary`` as one result's ``rows``: each metric's mean over the run's seeds (or None)."""
    return {"rows": [{"arm": r["arm"], "length_x": r["length_x"],
                      **{m: None if r[m] is None else r[m]["mean"] for m in METRICS}} for r in run["summary"]]}


def summarise_runs(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, float] | None]]:
    """Over training runs: per (arm, length) and metric, ``{mean, std, min, max, runs}`` of the runs' means
    (``summary`` of each); the same for each ``LENS_KEYS`` value (each run's mean over its seeds)."""
    out = summarise([run_means(run) for run in runs], "runs")
    lens = {key: spread([m for m in (lens_mean(run, key) for run in runs) if m is not None], "runs")
            for key in LENS_KEYS.values()}
    return out, lens


def format_targets(targets: list[dict[str, Any]], names: list[str]) -> str:
    w = max(9, *(len(n) for n in names))
    lines = [f"{'target':40s} " + "  ".join(f"{n:>{w}s}" for n in names) + "  met"]
    for t in targets:
        cells = ["- x" if v is None else f"{v:.3f}{'' if ok else ' x'}" for v, ok in zip(t["values"], t["met"],
                                                                                     strict=True)]
        lines.append(f"{t['target'] + ' ' + t['op'] + ' ' + format(t['threshold'], 'g'):40s} "
                     + "  ".join(f"{c:>{w}s}" for c in cells) + f"  {t['met_runs']}/{t['runs']}")
    return "\n".join(lines)


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
    p.add_argument("--checkpoint", type=Path, action="append", default=None,
                   help="a tiny.pt from `megacontext eval train-tiny`; repeat it for several training runs of one "
                        "recipe (summarised across the runs too)")
    p.add_argument("--seeds", type=seed_list, default="1234",
                   help="evaluation seeds (comma list); report seeds you did not tune on")
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
    seeds = args.seeds
    checkpoints = list(args.checkpoint or [])
    missing = [str(c) for c in checkpoints if not c.exists()]
    if missing:
        p.error(f"--checkpoint: no such file or directory: {', '.join(missing)}")
    if len(set(checkpoints)) != len(checkpoints):
        p.error("--checkpoint: the same checkpoint is given twice")
    if not checkpoints:
        out = args.json.parent / "long_context_model"
        train = ["eval", "train-tiny", "--out", str(out)]
        if args.quick:
            train += ["--plain-steps", "10", "--mc-steps", "10"]
        if megacontext(train) != 0:
            return 1
        checkpoints = [out / "tiny.pt"]
    runs = []
    for k, ckpt in enumerate(checkpoints):
        stem = args.json.stem if len(checkpoints) == 1 else f"{args.json.stem}_run{k}"
        results = []
        for i, seed in enumerate(seeds):
            seed_json = args.json.with_name(f"{stem}_seed{seed}.json")
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
            if i == 0 and k == 0 and args.png is not None:
                cmd += ["--png", str(args.png)]
            if megacontext(cmd) != 0:
                return 1
            results.append(json.loads(seed_json.read_text()))
        summary = summarise(results)
        lens = {key: [r.get(key) for r in results] for key in LENS_KEYS.values()}
        print()
        print(f"{ckpt}: summary over seeds {seeds} (mean ± population std)")
        print(format_summary(summary, lens))
        runs.append({"checkpoint": str(ckpt), "summary": summary, **lens, "per_seed": results})
    targets = check_targets(runs)
    names = [Path(r["checkpoint"]).parent.name or r["checkpoint"] for r in runs]
    if len(set(names)) < len(names):  # runs/a/tiny.pt and other/a/tiny.pt: the paths tell them apart
        names = [r["checkpoint"] for r in runs]
    print()
    print("targets, per run; x: missed")
    print(format_targets(targets, names))
    evaluated = {r["length_x"] for run in runs for r in run["summary"]}
    further = check_targets(runs, tuple(t for t in FURTHER_TARGETS if t[2] in evaluated))
    if further:
        print("further targets (issue 27), per run")
        print(format_targets(further, names))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:
        payload: dict[str, Any] = {"seeds": seeds, **runs[0], "targets": targets, "further_targets": further}
    else:
        across, lens_across = summarise_runs(runs)
        print()
        print(f"across {len(runs)} training runs (mean ± population std of each run's mean)")
        print(format_summary(across, {}))
        for key, v in lens_across.items():
            if v is not None:
                print(f"{key}: {v['mean']:.3f} ± {v['std']:.3f} over {v['runs']} runs")
        payload = {"seeds": seeds, "checkpoints": [r["checkpoint"] for r in runs], "runs": runs,
                   "across_runs": across, "lens_across_runs": lens_across, "targets": targets,
                   "further_targets": further}
        base = args.png or args.json  # --png is the first seed's heatmap; the runs' plot goes beside it
        plot_runs(base.with_name(f"{base.stem}_runs.png"), runs, names)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def plot_runs(path: Path, runs: list[dict[str, Any]], names: list[str]) -> None:
    """MC passkey exact by length, one line per training run (the across-runs PNG)."""
    series = {}
    for name, run in zip(names, runs, strict=True):
        cells = [(r["length_x"], r["passkey_acc"]["mean"]) for r in run["summary"]
                 if r["arm"] == "mc" and r["passkey_acc"] is not None]
        if cells:
            series[name] = ([float(x) for x, _ in cells], [float(v) for _, v in cells])
    if series:
        plot_lines(path, series, title="MC passkey exact per training run", xlabel="length (x W)",
                   ylabel="passkey exact", logx=True, hline=(0.90, "8x target"))


if __name__ == "__main__":
    sys.exit(main())
