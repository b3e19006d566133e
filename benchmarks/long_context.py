"""Long-context quality: truncation, uniform compression, MegaContext and full attention at one budget.

A thin wrapper over ``megacontext eval`` (``megacontext_plugin.evaluation``) in the benchmarks'
convention: ``python benchmarks/long_context.py [--quick] [--checkpoint PATH] --json PATH``.
Without ``--checkpoint`` it first runs ``megacontext eval train-tiny`` into a directory beside the
JSON (the full recipe, about 13 minutes on one core; ``--quick``: a 20-step model, about 15 s,
whose numbers only show that the pipeline runs). The table, JSON keys and PNGs are the
command's (README, "Long-context quality").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megacontext_plugin.cli import main as megacontext


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 20-step model and few documents (pipeline check)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a tiny.pt from `megacontext eval train-tiny`")
    p.add_argument("--json", type=Path, default=Path("bench-out/long_context.json"))
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args(argv)
    ckpt = args.checkpoint
    if ckpt is None:
        out = args.json.parent / "long_context_model"
        train = ["eval", "train-tiny", "--out", str(out)]
        if args.quick:
            train += ["--plain-steps", "10", "--mc-steps", "10"]
        if megacontext(train) != 0:
            return 1
        ckpt = out / "tiny.pt"
    cmd = ["eval", "long-context", "--checkpoint", str(ckpt), "--budget", "64", "--json", str(args.json)]
    cmd += ["--lengths", "1,2,4,8" if args.quick else "1,2,4,8,16"]
    if args.quick:
        cmd += ["--samples", "2", "--recall-docs", "2", "--lens-docs", "2"]
    if args.png is not None:
        cmd += ["--png", str(args.png)]
    return megacontext(cmd)


if __name__ == "__main__":
    sys.exit(main())
