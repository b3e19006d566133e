"""``megacontext eval validate --checkpoint DIR``: the post-run validation of any checkpoint of a nanochat run.

The same validation ``base_eval --mc`` and ``chat_eval --mc`` add after upstream's numbers
(``postrun.post_run_validation``: every arm at the run's budget, the operating guide's bands, the
files and the report section), for a checkpoint no upstream script can validate offline: upstream's
``chat_eval`` downloads its tasks, so the offline CPU recipes validate their SFT checkpoint with this.
The run's own knobs come from the ``megacontext_{step}.pt`` saved beside the model.

The section goes into the run's report (``DIR/../../report``): appended to the stage's section when
an upstream script logged it (``chat-evaluation-sft.md`` after ``chat_eval -i sft``), else logged as
that section with a line saying upstream's tasks were not run, so ``nanochat.report generate``
shows it where upstream's numbers would be.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from . import nanochat_checkpoint
from .postrun import log_host_section, post_run_validation, report_beside

SOURCES = {"base_checkpoints": "base", "mid_checkpoints": "mid", "chatsft_checkpoints": "sft",
           "chatrl_checkpoints": "rl"}
"""nanochat's checkpoint directories and the source names its scripts give them (``chat_eval -i``)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a checkpoint directory of a run trained with --mc, e.g. .../chatsft_checkpoints/d4")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the last)")
    p.add_argument("--source", choices=sorted(set(SOURCES.values())), default=None,
                   help="the stage's name in the report (default: from the directory: chatsft_checkpoints -> sft)")


def source_of(checkpoint: Path) -> str | None:
    """The stage's source name from nanochat's layout (``.../chatsft_checkpoints/TAG`` -> ``sft``)."""
    return SOURCES.get(checkpoint.resolve().parent.name)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.checkpoint.is_dir():
        parser.error(f"--checkpoint {args.checkpoint}: not a directory (expected a run's checkpoint directory, "
                     f"e.g. $NANOCHAT_BASE_DIR/chatsft_checkpoints/d4)")
    source = args.source or source_of(args.checkpoint)
    if source is None:
        parser.error(f"--checkpoint {args.checkpoint}: not under one of nanochat's checkpoint directories "
                     f"({', '.join(SOURCES)}); pass --source")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    try:
        nc = nanochat_checkpoint.load(args.checkpoint, args.step)
    except CheckpointError as e:
        parser.error(f"--checkpoint {e}")
    if not nc.trained_with_mc:
        parser.error(f"--checkpoint {args.checkpoint}: step {nc.step} was trained without --mc (no "
                     f"megacontext_{nc.step}.pt beside it): there are no aux nets to validate")
    report = report_beside(args.checkpoint)
    log_host_section(report, source, {"checkpoint": f"{args.checkpoint} step {nc.step}",
                     "upstream's tasks": "not run (they download their data); the MegaContext validation only"})
    gpt = nc.model.gpt
    post_run_validation(gpt, nc.tokenizer, nc.nets, source, report)
    return 0
