"""The long-context evaluation's table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def format_cell(value: Any) -> str:
    """One table cell: ``-`` for a missing value, floats to three decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    cols = [c for c in ("arm", "length_x", "passkey_acc", "passkey_digit", "recall_acc", "chat_acc", "documents",
                        "nll_h", "delta_nll_h", "delta_nll_truncation", "gap_closed", "swap_rate", "residency",
                        "key_raw", "key_raw_reachable", "key_raw_acc", "tail")
            if any(c in r for r in result["rows"])]

    s = result["settings"]
    what = f" of {s['documents']}" if s.get("documents") else ""
    lines = [f"long-context eval{what}: budget W={s['budget']}, K={s['block_size']}, H={s['horizon']}, "
             f"model window {s['sequence_len']}, {s['tokens']}"]
    for arm in s["arms"]:
        rows = [r for r in result["rows"] if r["arm"] == arm]
        cells = [[format_cell(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines.append("")
        lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append("")
    if "lens_rank_corr" not in result:  # --documents: NLL@H alone
        return "\n".join(lines)
    lr = result["lens_rank_corr"]
    lines.append(f"lens_rank_corr (Spearman, LensNet utility vs true NLL drop of expanding each gist): "
                 f"{format_cell(lr)} over {result['lens_rank_corr_docs']} documents")
    lines.append(f"lens_top1 (LensNet's top gist is the most useful one to expand): {format_cell(result['lens_top1'])}")
    lines.append(f"  references: lens_rank_retest (the true ranking against a twin document with other key digits) "
                 f"{format_cell(result.get('lens_rank_retest'))}, lens_rank_key_oracle (a lens that knows where "
                 f"the key is) {format_cell(result.get('lens_rank_key_oracle'))}")
    for arm, g in result["passkey_grid"].items():
        lines.append(f"\npasskey exact match, {arm} (rows: depth, columns: length x W)")
        head = "depth\\len " + " ".join(f"{n:>6d}" for n in g["lengths_x"])
        lines.append(head)
        for d, accs in zip(g["depths"], g["accuracy"], strict=True):
            lines.append(f"{d:9.2f} " + " ".join("     -" if a is None or a != a else f"{a:6.2f}" for a in accs))
    return "\n".join(lines)


def write_plots(result: dict[str, Any], png: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'megacontext-plugin[bench]'): no PNG written")
        return []
    png.parent.mkdir(parents=True, exist_ok=True)
    written = []
    grids = result.get("passkey_grid", {})
    if grids:
        fig, axes = plt.subplots(1, len(grids), figsize=(3.0 * len(grids) + 1.5, 3.8), squeeze=False,
                                 layout="constrained")
        for k, (ax, (arm, g)) in enumerate(zip(axes[0], grids.items(), strict=True)):
            acc = np.array([[np.nan if a is None else a for a in row] for row in g["accuracy"]], dtype=float)
            im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
            ax.set_xticks(range(len(g["lengths_x"])), [f"{n}x" for n in g["lengths_x"]])
            ax.set_yticks(range(len(g["depths"])), [f"{d:.2f}" for d in g["depths"]] if k == 0 else [])
            ax.set_title(arm)
            ax.set_xlabel("length (x W)")
            for i in range(acc.shape[0]):
                for j in range(acc.shape[1]):
                    if np.isfinite(acc[i, j]):
                        ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if acc[i, j] < 0.5 else "black")
        axes[0][0].set_ylabel("passkey depth")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="exact match")
        fig.suptitle(f"passkey accuracy at budget W={result['settings']['budget']}")
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm in result["settings"]["arms"]:
        pts = [(r["length_x"], r["nll_h"]) for r in result["rows"] if r["arm"] == arm and r.get("nll_h") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("length (x W)")
    ax.set_ylabel(f"NLL@H (H={result['settings']['horizon']}), nats")
    ax.legend()
    fig.tight_layout()
    nll_png = png.with_name(png.stem + "_nll.png")
    fig.savefig(nll_png, dpi=120)
    plt.close(fig)
    written.append(nll_png)
    return written
