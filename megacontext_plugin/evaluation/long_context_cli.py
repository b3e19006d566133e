"""``megacontext eval long-context``: the command line of the long-context evaluation.

Flags, checks (one line and exit 2 for a mistake, before any work), loading the checkpoint (a tiny
``tiny.pt`` or a nanochat checkpoint directory), the chat arm's hand-off (``--chat``), the user's text
files (``--documents``), and the printed tables, JSON and plots. What is measured is
``long_context.evaluate`` / ``evaluate_documents`` (see that module for the metrics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..config import ConfigError, MCConfig
from ..data import stdlib_text
from ..focus import PROMPT_ROUNDS
from ..nets.tiny_checkpoint import load
from . import chat_arm, nanochat_checkpoint
from .arms import ARMS, unheld_lengths, unheld_reason
from .codec import BYTES, tokenizer_codec
from .documents import (
    read_text_file,
)
from .long_context import evaluate, evaluate_documents
from .report import format_table, write_plots

DEFAULT_LENGTHS = "1,2,4,8,16"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a tiny checkpoint from `megacontext eval train-tiny`, or a nanochat checkpoint directory "
                        "(base, mid or SFT; trained with or without --mc; needs NANOCHAT_DIR or nanochat importable)")
    p.add_argument("--step", type=int, default=None, help="nanochat checkpoint: the step to load (default: the last)")
    p.add_argument("--budget", type=int, default=None,
                   help="working-context budget W (entries), every arm (default: 64 for a tiny checkpoint; a "
                        "nanochat checkpoint's own budget, as its post-run validation uses)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS,
                   help="document lengths as multiples of W (comma list; by default those the budget can hold of "
                        f"{DEFAULT_LENGTHS})")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey depths (fractions, comma list)")
    p.add_argument("--samples", type=int, default=8, help="passkey documents per (depth, length) cell")
    p.add_argument("--recall-docs", type=int, default=16, help="recall documents per length")
    p.add_argument("--lens-docs", type=int, default=8, help="passkey documents per length for lens_rank_corr")
    p.add_argument("--horizon", type=int, default=None,
                   help="H: tokens at the end of a document for ΔNLL@H (default: 16 for a tiny checkpoint; a "
                        "nanochat checkpoint's --mc_horizon)")
    p.add_argument("--arms", default=None,
                   help=f"comma list out of {','.join(ARMS)} (default: all; a nanochat run trained without --mc "
                        f"has no GistNet/LensNet, so truncation,full)")
    p.add_argument("--rounds", type=int, default=PROMPT_ROUNDS, help="refocus calls of the MC arm per document")
    p.add_argument("--start", choices=("recency", "coarsest"), default="coarsest",
                   help="the MC arm's working context before refocusing")
    p.add_argument("--seed", type=int, default=1234, help="seed of the evaluation documents")
    p.add_argument("--expand-threshold", type=float, default=None,
                   help="override the checkpoint's --allocator_expand_threshold for the MC arm")
    p.add_argument("--collapse-threshold", type=float, default=None,
                   help="override the checkpoint's --allocator_collapse_threshold for the MC arm")
    p.add_argument("--max-replacements", type=int, default=None,
                   help="override the checkpoint's --allocator_max_replacements for the MC arm")
    p.add_argument("--iterations", type=int, default=None,
                   help="override the checkpoint's --allocator_iterations for the MC arm (rounds per refocus call)")
    p.add_argument("--expand-neighbours", type=int, default=None,
                   help="override the checkpoint's --allocator_expand_neighbours for the MC arm (ablation)")
    p.add_argument("--documents", type=Path, nargs="+", default=None, metavar="PATH",
                   help="evaluate NLL@H on these text files instead of the seeded tasks: each is tokenized with the "
                        "run's tokenizer and cut into documents of each length (a run's training files, listed in "
                        "its corpus_train_files.txt, are refused)")
    p.add_argument("--documents-per-length", type=int, default=40,
                   help="--documents: at most this many documents per length, taken round-robin over the files")
    p.add_argument("--chat", action="store_true", help="the chat arm on a chat checkpoint (chatsft_checkpoints/TAG): "
                   "greedy answers to conversations that plant a fact first and ask for it last (chat_arm.py)")
    p.add_argument("--chat-docs", type=int, default=None, help="--chat: conversations per length (default 40)")
    p.add_argument("--chat-flags", default=None, help="--chat: chat_cli --mc flags for the mc arm on top of the run's "
                   "(e.g. --chat-flags='--mc_refocus_every 16')")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--png", type=Path, default=None,
                   help="heatmap PNG (default: beside --json); the ΔNLL plot gets the suffix _nll")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.chat or args.chat_docs is not None or args.chat_flags is not None:
        return chat_arm.run(args, parser)
    try:
        lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
        depths = _floats(args.depths)
        arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    bad = [a for a in arms or () if a not in ARMS]
    if bad or arms == []:
        parser.error(f"--arms: unknown {bad}; expected names out of {ARMS}")
    if any(x < 1 for x in lengths) or not lengths:
        parser.error("--lengths: multiples of the budget must be >= 1")
    overrides = {k: v for k, v in (("allocator_expand_threshold", args.expand_threshold),
                                   ("allocator_collapse_threshold", args.collapse_threshold),
                                   ("allocator_max_replacements", args.max_replacements),
                                   ("allocator_iterations", args.iterations),
                                   ("allocator_expand_neighbours", args.expand_neighbours)) if v is not None}
    try:  # the knobs' own checks, before a checkpoint is loaded
        dataclasses.replace(MCConfig(), **overrides)
    except ConfigError as e:
        parser.error(str(e))
    if not args.checkpoint.exists():
        parser.error(f"--checkpoint {args.checkpoint}: no such file or directory")
    texts = None if args.documents is None else _read_documents(args.documents, args.checkpoint)
    if args.documents_per_length < 1:
        _fail(f"--documents-per-length {args.documents_per_length}: expected an integer >= 1")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    codec = BYTES
    if args.checkpoint.is_dir():  # a nanochat run: its GPT, its tokenizer, its aux nets (if trained with --mc)
        try:
            nc = nanochat_checkpoint.load(args.checkpoint, args.step)
        except CheckpointError as e:
            parser.error(f"--checkpoint {e}")
        model, nets, recipe, codec = nc.model, nc.nets, nc.recipe, tokenizer_codec(nc.tokenizer)
        budget = args.budget or nc.budget
        horizon = args.horizon or nets.cfg.mc_horizon
        if not nc.trained_with_mc:
            asked = [a for a in arms or () if a in nanochat_checkpoint.NEEDS_AUX_NETS]
            if asked:
                parser.error(f"--arms {','.join(asked)}: {args.checkpoint} step {nc.step} was trained without --mc "
                             f"(no megacontext_{nc.step:06d}.pt), so there is no GistNet/LensNet to run them with; "
                             f"use --arms truncation,full")
            arms = arms or [a for a in ARMS if a not in nanochat_checkpoint.NEEDS_AUX_NETS]
            print(f"{args.checkpoint} step {nc.step}: trained without --mc, so the arms are {','.join(arms)} "
                  f"(vanilla attention at W={budget}; uniform and mc need the aux nets an --mc run trains)")
        else:
            print(f"{args.checkpoint} step {nc.step}: GistNet and LensNet from {recipe['megacontext_state']}")
    else:
        if args.step is not None:
            parser.error("--step: only for a nanochat checkpoint directory")
        try:
            model, nets, recipe = load(args.checkpoint)
        except ValueError as e:
            parser.error(f"--checkpoint {e}")
        budget, horizon = args.budget or 64, args.horizon or 16
    arms = arms or list(ARMS)
    if budget > int(model.config.sequence_len) or horizon >= budget:
        parser.error(f"--budget {budget} / --horizon {horizon}: need horizon < budget <= the model's window "
                     f"{model.config.sequence_len}")
    if any(a in ("uniform", "mc") for a in arms):
        lengths = _held_lengths(parser, lengths, explicit=args.lengths != DEFAULT_LENGTHS, budget=budget,
                                horizon=horizon, block_size=nets.cfg.block_size, recent=nets.prompt_recent,
                                slack=0.0 if codec.byte_level else 0.25)
    if overrides:
        nets.cfg = dataclasses.replace(nets.cfg, **overrides)
    with torch.no_grad():
        if texts is not None:
            result = evaluate_documents(model, nets, texts, budget=budget, lengths=lengths, horizon=horizon,
                                        arms=arms, limit=args.documents_per_length, rounds=args.rounds,
                                        start=args.start, codec=codec)
        else:
            result = evaluate(model, nets, budget=budget, lengths=lengths, depths=depths, samples=args.samples,
                              recall_docs=args.recall_docs, lens_docs=args.lens_docs, horizon=horizon, arms=arms,
                              rounds=args.rounds, start=args.start, seed=args.seed, codec=codec)
    result["checkpoint"] = str(args.checkpoint)
    result["recipe"] = recipe
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    png = args.png or (args.json.with_suffix(".png") if args.json is not None else None)
    if png is not None:
        written = write_plots(result, png)
        for path in written:
            print(f"wrote {path}")
    return 0


def _held_lengths(parser: argparse.ArgumentParser, lengths: list[int], *, explicit: bool, budget: int, horizon: int,
                  block_size: int, recent: int, slack: float) -> list[int]:
    """The lengths the compressed arms can hold (``arms.unheld_lengths``; ``slack``: bytes are exact, a
    tokenizer's lengths vary). A length asked for explicitly that cannot be held is one error line; the
    default lengths drop it, saying so."""
    geometry = {"budget": budget, "horizon": horizon, "block_size": block_size, "recent": recent}
    dropped = unheld_lengths(lengths, slack=slack, **geometry)
    if dropped:
        why = unheld_reason(*dropped[0], **geometry)
        if explicit:
            parser.error(f"--lengths {','.join(str(x) for x, _ in dropped)}: {why}; use shorter lengths or a larger "
                         f"--budget")
        print(f"lengths {','.join(f'{x}x' for x, _ in dropped)} left out: {why}")
    held = [x for x in lengths if x not in dict(dropped)]
    if not held:
        parser.error(f"--budget {budget}: no length can be held (a history of 1x needs {dropped[0][1]} entries)")
    return held


def _fail(message: str) -> NoReturn:
    """A user mistake about the documents: one line on stderr, exit 2."""
    print(f"megacontext eval long-context: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_documents(paths: Sequence[Path], checkpoint: Path) -> dict[str, str]:
    """``--documents``: each file's text by its path, read before any model is loaded. A file the run
    trained on (listed in ``corpus_train_files.txt`` of the checkpoint's run directory) is refused."""
    trained = _training_files(checkpoint)
    texts = {}
    for path in paths:
        try:
            texts[str(path)] = read_text_file(path)
        except ValueError as e:
            _fail(f"--documents {e}")
        if trained and _library_path(path) in trained:
            _fail(f"--documents {path}: the run trained on it (listed in {trained[_library_path(path)]}); evaluate "
                  f"on held-out files")
    return texts


def _training_files(checkpoint: Path) -> dict[str, Path]:
    """The standard-library files (relative paths) the run's corpus drew from, with the list naming them."""
    run_dir = checkpoint.parent.parent if checkpoint.is_dir() else checkpoint.parent
    listing = run_dir / "corpus_train_files.txt"
    if not listing.is_file():
        return {}
    return {line.strip(): listing for line in listing.read_text().splitlines() if line.strip()}


def _library_path(path: Path) -> str | None:
    """``path`` relative to the standard library's root, or None when it lies elsewhere."""
    try:
        return path.resolve().relative_to(stdlib_text.stdlib_root().resolve()).as_posix()
    except ValueError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)

