"""MegaContext in nanochat's own model: the quality recipe's targets (issue 27), met or not.

``python benchmarks/nanochat_quality.py --run DIR [--baseline DIR] [--seeds 11,12,13] [--quick] --json PATH``

``DIR`` is the output of ``integration/runcpu_quality.sh --mc`` (``--baseline``: of the same recipe without
``--mc``). On the run's base checkpoint, at its own budget W, for each evaluation seed: ``megacontext eval
long-context`` on 40 passkey documents per length (5 depths x 8) and 16 recall documents, at 2x, 4x, 8x and
16x W. Then NLL@H on held-out standard-library files (``--documents``: files of the library's held-out split
that the run's ``corpus_train_files.txt`` does not list) at 4x and 8x, and, where the run has an SFT
checkpoint, the chat arm (``--chat``: greedy answers to a fact planted in the first turn) at 8x: ``chat_acc``,
and for ``mc`` ``fact_raw`` and ``fact_raw_acc`` (the lens's and the reader's parts of a miss). The baseline
runs the arms a run without ``--mc`` has (truncation and full attention), at the ``--mc`` run's budget and H.
The table is each arm's mean ± population std over the seeds; ``targets`` checks issue 27's. The PNG plots
passkey exact by length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import plot_lines, seed_list, write_json
from long_context import TOLERANCE, format_summary, summarise

from megacontext_plugin.cli import main as megacontext
from megacontext_plugin.data import stdlib_text

TARGETS: tuple[tuple[str, str, str, int, str, str, float], ...] = (
    ("passkey exact, mc 8x", "summary", "mc", 8, "passkey_acc", ">=", 0.90),
    ("passkey exact, mc 16x", "summary", "mc", 16, "passkey_acc", ">=", 0.75),
    ("ΔNLL@H vs full, mc 4x", "summary", "mc", 4, "delta_nll_h", "<=", 0.10),
    ("ΔNLL@H vs full, mc 8x", "summary", "mc", 8, "delta_nll_h", "<=", 0.10),
    ("key_raw_reachable - key_raw, mc 8x", "reach", "mc", 8, "key_raw", "<=", 0.03),
    ("key_raw_reachable - key_raw, mc 16x", "reach", "mc", 16, "key_raw", "<=", 0.03),
    ("real text: gap closed, mc 8x", "documents", "mc", 8, "gap_closed", ">=", 0.50),
    ("chat exact, mc 8x", "chat", "mc", 8, "chat_acc", ">=", 0.80),
)
"""(name, source, arm, length x, metric, op, threshold): ``summary`` reads the seeds' mean, ``reach`` the
mean of ``key_raw_reachable`` minus that of ``key_raw``, ``documents`` the real-text rows, ``chat`` the chat
arm's seeds' mean. A target whose cell is not reported is null, not met."""

CHAT_METRICS = ("chat_acc", "fact_raw", "fact_raw_acc")
DOC_METRICS = ("nll_h", "delta_nll_h", "delta_nll_truncation", "gap_closed")


def base_checkpoint(run: Path) -> Path:
    """The run's one ``base_checkpoints/TAG`` directory."""
    tags = sorted(p for p in (run / "base_checkpoints").glob("*") if p.is_dir())
    if len(tags) != 1:
        raise SystemExit(f"nanochat_quality: error: {run}/base_checkpoints holds {len(tags)} model tags, expected one")
    return tags[0]


def held_out_files(run: Path, min_bytes: int, limit: int) -> list[Path]:
    """Standard-library files of the held-out split that the run did not train on, large enough for the
    longest document, in path order."""
    listing = run / "corpus_train_files.txt"
    trained = set(listing.read_text().split()) if listing.is_file() else set()
    root = stdlib_text.stdlib_root()
    files = [p for p in stdlib_text.split(0)[1]
             if p.relative_to(root).as_posix() not in trained and p.stat().st_size >= min_bytes]
    return files[:limit]


def _cell(rows: list[dict[str, Any]], arm: str, x: int, metric: str) -> float | None:
    v = next((r.get(metric) for r in rows if r["arm"] == arm and r["length_x"] == x), None)
    if isinstance(v, dict):
        return None if v.get("mean") is None else float(v["mean"])
    return None if v is None else float(v)


def target_value(result: dict[str, Any], source: str, arm: str, x: int, metric: str) -> float | None:
    if source == "reach":
        reach, raw = (_cell(result["summary"], arm, x, m) for m in ("key_raw_reachable", "key_raw"))
        return None if reach is None or raw is None else reach - raw
    rows = result.get(source) or []
    return _cell(rows, arm, x, metric)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, source, arm, x, metric, op, threshold in TARGETS:
        v = target_value(result, source, arm, x, metric)
        met = v is not None and (v >= threshold - TOLERANCE if op == ">=" else v <= threshold + TOLERANCE)
        out.append({"target": name, "op": op, "threshold": threshold, "value": v, "met": met})
    return out


def _evaluate(cmd: list[str], path: Path) -> dict[str, Any] | None:
    if megacontext(["eval", "long-context", *cmd, "--json", str(path)]) != 0:
        return None
    return json.loads(path.read_text())


def evaluate_run(run: Path, seeds: list[int], out: Path, *, quick: bool, chat: bool,
                 geometry: tuple[int, int] | None = None) -> dict[str, Any]:
    """Every arm of one recipe run: the seeded tasks per seed, the held-out files once, the chat arm.
    ``geometry``: the budget W and horizon H to evaluate at (the ``--mc`` run's, for its baseline);
    None: the checkpoint's own."""
    at = [] if geometry is None else ["--budget", str(geometry[0]), "--horizon", str(geometry[1])]
    base = base_checkpoint(run)
    samples, recall = ("2", "4") if quick else ("8", "16")
    lengths = "2,4,8" if quick else "2,4,8,16"
    per_seed = []
    for seed in seeds:
        r = _evaluate(["--checkpoint", str(base), "--seed", str(seed), "--lengths", lengths, "--samples", samples,
                       "--recall-docs", recall, "--lens-docs", "2" if quick else "4", *at],
                      out.with_name(f"{out.stem}_seed{seed}.json"))
        if r is None:
            raise SystemExit(1)
        per_seed.append(r)
    result: dict[str, Any] = {"run": str(run), "checkpoint": str(base), "per_seed": per_seed,
                              "summary": summarise(per_seed)}
    budget = per_seed[0]["settings"]["budget"]
    files = held_out_files(run, min_bytes=8 * budget * 4, limit=40)
    if files:
        docs = _evaluate(["--checkpoint", str(base), "--documents", *map(str, files), "--lengths", "4,8",
                          "--documents-per-length", "8" if quick else "40", *at],
                         out.with_name(f"{out.stem}_docs.json"))
        result["documents"] = None if docs is None else docs["rows"]
        result["documents_files"] = [str(f) for f in files]
    sft = sorted((run / "chatsft_checkpoints").glob("*"))
    if chat and sft:
        # the default refocus interval (0: W/8, at most 32; at W = 64 every 8 tokens, D54), also for a run whose
        # checkpoint recorded the fixed 32 that was the default before
        chats = [_evaluate(["--checkpoint", str(sft[0]), "--chat", "--seed", str(seed), "--lengths", "8",
                            "--chat-docs", "8" if quick else "40", "--chat-flags=--mc_refocus_every 0", *at[:2]],
                           out.with_name(f"{out.stem}_chat{seed}.json"))
                 for seed in seeds]
        if all(c is not None for c in chats):
            result["chat"] = [{"arm": r["arm"], "length_x": r["length_x"],
                               **{m: v for m in CHAT_METRICS if (v := _mean_over(chats, r["arm"], r["length_x"], m))
                                  is not None}} for r in chats[0]["rows"]]  # type: ignore[index]
    return result


def _mean_over(results: list[Any], arm: str, x: int, metric: str) -> float | None:
    vals = [v for res in results if (v := _cell(res["rows"], arm, x, metric)) is not None]
    return sum(vals) / len(vals) if vals else None


def format_rows(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    lines = ["arm        len  " + "  ".join(f"{m:>20s}" for m in metrics)]
    for r in rows:
        cells = ["-" if r.get(m) is None else f"{r[m]:.3f}" for m in metrics]
        lines.append(f"{r['arm']:10s} {r['length_x']:>3d}x " + "  ".join(f"{c:>20s}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="integration/runcpu_quality.sh --mc's output directory")
    p.add_argument("--baseline", type=Path, default=None, help="the same recipe's output without --mc")
    p.add_argument("--seeds", type=seed_list, default="11,12,13",
                   help="evaluation seeds (comma list); report seeds you did not tune on")
    p.add_argument("--quick", action="store_true", help="few documents (a pipeline check, not the numbers)")
    p.add_argument("--no-chat", action="store_true", help="skip the chat arm")
    p.add_argument("--json", type=Path, default=Path("bench-out/nanochat_quality.json"))
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args(argv)
    seeds = args.seeds
    for run in filter(None, (args.run, args.baseline)):
        if not (run / "base_checkpoints").is_dir():
            p.error(f"{run}: not a runcpu_quality.sh output directory (no base_checkpoints)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    mc = evaluate_run(args.run, seeds, args.json.with_name(args.json.stem + "_mc.json"), quick=args.quick,
                      chat=not args.no_chat)
    payload: dict[str, Any] = {"seeds": seeds, "mc_run": mc}
    if args.baseline is not None:  # at the --mc run's budget and horizon: the same question asked of both
        settings = mc["per_seed"][0]["settings"]
        payload["baseline_run"] = evaluate_run(args.baseline, seeds, args.json.with_name(args.json.stem + "_base.json"),
                                               quick=args.quick, chat=not args.no_chat,
                                               geometry=(settings["budget"], settings["horizon"]))
    payload["targets"] = check_targets(mc)
    for name, result in (("--mc run", mc), ("baseline (no --mc)", payload.get("baseline_run"))):
        if result is None:
            continue
        print(f"\n{name} {result['run']}: seeds {seeds} (mean ± population std)")
        print(format_summary(result["summary"], {}))
        if result.get("documents"):
            print(f"real text, {len(result['documents_files'])} held-out standard-library files")
            print(format_rows(result["documents"], DOC_METRICS))
        if result.get("chat"):
            print("chat (greedy answers to the first turn's fact)")
            print(format_rows(result["chat"], CHAT_METRICS))
    print("\ntargets (issue 27); x: missed")
    for t in payload["targets"]:
        v = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {t['target'] + ' ' + t['op'] + ' ' + format(t['threshold'], 'g'):48s} {v:>8s} "
              f"{'met' if t['met'] else 'x'}")
    write_json(args.json, payload)
    series = {}
    for label, result in (("mc run", mc), ("baseline", payload.get("baseline_run"))):
        for arm in ("truncation", "mc", "full"):
            cells = [(r["length_x"], r["passkey_acc"]["mean"]) for r in (result or {}).get("summary", [])
                     if r["arm"] == arm and r["passkey_acc"] is not None]
            if cells:
                series[f"{label}: {arm}"] = ([float(x) for x, _ in cells], [float(v) for _, v in cells])
    if series:
        png = args.png or args.json.with_suffix(".png")
        plot_lines(png, series, title="nanochat: passkey exact at the run's budget W", xlabel="length (x W)",
                   ylabel="passkey exact", logx=True, hline=(0.90, "8x target"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
