"""The MegaContext section of nanochat's report: knobs, the post-run validation table, and PNG plots of
the run's ``mc/*`` curves read back from its own JSONL telemetry.

The curves come from the events a ``--mc`` training run writes on its telemetry cadence
(``docs/telemetry.md``): ``mc_batch_stats`` (token / per-level / LensNet losses, ΔNLL@H),
``focus_allocator`` (the focus probe's swap rate and residency) and ``mc_timing`` (controller ms).
The run's telemetry is the newest ``{stage}-...`` directory of each training stage (base, mid,
sft) under the telemetry directory; the stages are drawn one after the other on a shared step axis.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGES = ("base", "mid", "sft")
PANELS = (
    ("losses (nats)", ("token_loss", "lod0_loss", "lod1_loss", "lod2_loss")),
    ("LensNet loss (nats)", ("lens_loss",)),
    ("ΔNLL@H (nats, random variants - baseline)", ("delta_nll_h",)),
    ("swap rate (focus probe)", ("swap_rate",)),
    ("residency (focus probe)", ("residency",)),
    ("controller ms per micro-batch", ("controller_ms",)),
)

Curves = dict[str, list[tuple[int, float]]]
"""Series name -> ``(step, value)`` points in step order."""


def latest_runs(telemetry_dir: Path) -> dict[str, Path]:
    """The newest JSONL telemetry file of each training stage (run ids sort by UTC time)."""
    out: dict[str, Path] = {}
    if not telemetry_dir.is_dir():
        return out
    for stage in STAGES:
        runs = sorted(p for p in telemetry_dir.glob(f"{stage}-*") if (p / "telemetry.jsonl").is_file())
        if runs:
            out[stage] = runs[-1] / "telemetry.jsonl"
    return out


def read_curves(path: Path) -> Curves:
    """The ``mc/*`` curves of one run's JSONL (rotated files included, oldest first)."""
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    files = [*sorted(rotated, key=lambda p: -int(p.suffix[1:])), path]  # .3 is the oldest
    curves: Curves = defaultdict(list)
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
            a, name = event.get("attributes", {}), event.get("name")
            step = a.get("step")
            if step is None:
                continue
            if name == "mc_batch_stats":
                for key in ("token_loss", "lens_loss", "delta_nll_h"):
                    if key in a:
                        curves[key].append((step, a[key]))
                for level, value in enumerate(a.get("lod_losses", [])):
                    curves[f"lod{level}_loss"].append((step, value))
            elif name == "focus_allocator":
                curves["swap_rate"].append((step, a["swap_rate"]))
                curves["residency"].append((step, a["residency"]))
            elif name == "mc_timing" and "controller_ms" in a:
                curves["controller_ms"].append((step, a["controller_ms"]))
    return {k: sorted(v) for k, v in curves.items()}


def plot_curves(runs: dict[str, Curves], png: Path) -> Path | None:
    """One PNG, a panel per quantity; each stage in its own colour on a shared step axis (later stages
    start where the previous one ended, a dotted line at each boundary). None without matplotlib
    or without any point."""
    if not any(runs.values()):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    fig, axes = plt.subplots(3, 2, figsize=(11, 10), layout="constrained")
    colours = {"base": "tab:blue", "mid": "tab:orange", "sft": "tab:green"}
    styles = ("-", "--", ":", "-.")
    offsets, start = {}, 0
    for stage in STAGES:
        if stage in runs:
            offsets[stage] = start
            last = max((p[0] for series in runs[stage].values() for p in series), default=0)
            start += last + 1
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for stage, curves in runs.items():
            for style, key in zip(styles, keys, strict=False):
                points = curves.get(key, [])
                if not points:
                    continue
                xs = [offsets[stage] + s for s, _ in points]
                label = f"{stage} {key}" if len(keys) > 1 else stage
                ax.plot(xs, [v for _, v in points], style, marker="o", markersize=3, color=colours[stage], label=label)
                drawn = True
        for x in offsets.values():
            if x:
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step (base, then mid, then sft)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)  # plain values, no "1e-6 + 6.23" offsets
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no points in the telemetry", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("MegaContext training curves (from the run's JSONL telemetry, every --mc_telemetry_every steps)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_validation(result: dict[str, Any], png: Path) -> Path | None:
    """NLL@H and passkey accuracy of each arm against the document length (x the budget)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for arm in result["settings"]["arms"]:
        rows = [r for r in result["rows"] if r["arm"] == arm]
        for ax, key in ((ax1, "nll_h"), (ax2, "passkey_acc")):
            pts = [(r["length_x"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
    s = result["settings"]
    ax1.set_title(f"NLL@H (H={s['horizon']}) on held-out documents", fontsize=10)
    ax2.set_title("passkey exact match (teacher forcing)", fontsize=10)
    ax2.set_ylim(-0.05, 1.05)
    for ax in (ax1, ax2):
        ax.set_xlabel(f"document length (x budget W={s['budget']})")
        ax.set_xticks(s["lengths_x"])
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def section(source: str, knobs: dict[str, Any], table: str, images: list[Path], report_dir: Path,
            runs: dict[str, Path], bands: Sequence[str] = ()) -> str:
    """The section's Markdown body (nanochat's ``Report.log`` adds the title and timestamp); images
    are linked relative to the report directory, where ``report.md`` is written. ``bands``: the operating
    guide's band checks, one line each (``evaluation.bands``)."""
    lines = [f"MegaContext post-run validation of the {source} checkpoint (held-out seeded documents, the run's "
             "tokenizer; ΔNLL@H vs full attention where the document fits the window, vs truncation at every "
             "length; swap rate and residency of the MC arm's refocus calls).", "", table, ""]
    if bands:
        lines += ["The operating guide's bands:", "", *(f"- {line}" for line in bands), ""]
    for png in images:
        rel = png.relative_to(report_dir) if png.is_relative_to(report_dir) else png
        lines += [f"![{png.stem}]({rel.as_posix()})", ""]
    if runs:
        lines += ["Telemetry read: " + ", ".join(f"{stage} `{path}`" for stage, path in runs.items()), ""]
    else:
        lines += ["No JSONL telemetry of this run was found (trained with `--mc_telemetry none|otlp`, or "
                  "`--mc_telemetry_every 0`): no training curves.", ""]
    lines += ["Knobs:", "", "| knob | value |", "| --- | --- |"]
    lines += [f"| `--{k}` | `{v}` |" for k, v in knobs.items()]
    return "\n".join(lines) + "\n"
