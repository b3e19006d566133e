"""``megacontext tasks``: the offline chat conversations (``data.conversations``) written for the nanochat that
reads them: the pin's JSONL files (``write_task_dir``) or master's dataset cache (``data.hub_cache``).

Usage: ``python -m megacontext_plugin.data.tasks_cli --out DIR [--upstream pin|master] [--seed N] ...``
(or ``megacontext tasks``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .arguments import float_at_least, int_at_least
from .conversations import CHARS_PER_TOKEN, DEFAULT_COUNTS, MIN_TOKENS, SPLITS, Lengths, write_task_dir
from .corpus import load_tokenizer
from .hub_cache import estimated_tokens, write_hub_cache

DESCRIPTION = (
    "Write seeded chat conversations (nanochat CustomJSON JSONL) for mid-training and chat SFT: "
    "mid_train, mid_val, sft_train and sft_val .jsonl, read by our patch from NANOCHAT_TASK_DIR; with "
    "--upstream master, the same conversations in master's dataset cache (OUT is the run's NANOCHAT_BASE_DIR)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The task flags (shared by ``python -m ...tasks_cli`` and ``megacontext tasks``)."""
    p.add_argument("--out", required=True, help="output directory (created; our four files are overwritten); with "
                   "--upstream master the run's NANOCHAT_BASE_DIR, whose task_data/ gets the conversations")
    p.add_argument("--upstream", choices=("pin", "master"), default="pin",
                   help="the nanochat that reads them: pin (NANOCHAT_TASK_DIR's JSONL files, the default) or master "
                        "(its dataset cache: SmolTalk = the mid and SFT conversations, MMLU and GSM8K placeholders)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    for split in SPLITS:
        flag = "--" + split.replace("_", "-")
        p.add_argument(flag, type=int_at_least(1), default=DEFAULT_COUNTS[split],
                       help=f"conversations in {split}.jsonl (default {DEFAULT_COUNTS[split]})")
    p.add_argument("--max-seq-len", type=int_at_least(MIN_TOKENS), default=Lengths.max_seq_len,
                   help=f"nanochat's --max-seq-len, a length hint in tokens (default {Lengths.max_seq_len})")
    p.add_argument("--tokenizer", default=None,
                   help="with --upstream master: the run's tokenizer directory (tok_train's, holding tokenizer.pkl), "
                        "to keep exactly the conversations that fit one row of --max-seq-len + 1 tokens (master's "
                        f"loader never crops); without it, lengths are estimated at {CHARS_PER_TOKEN:g} characters "
                        "per token, which leaves out more")
    p.add_argument("--length-factor", type=float_at_least(1.0), default=Lengths.length_factor,
                   help="longest conversation = factor x max-seq-len tokens at ~3 characters per token "
                        f"(default {Lengths.length_factor:g})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megacontext_plugin.data.tasks_cli", description=DESCRIPTION)
    add_arguments(p)
    return p


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write the task directory from parsed flags; exit 0, 2 (via ``parser.error``) or 1 with one line."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    try:
        lengths = Lengths(args.max_seq_len, args.length_factor)
    except ValueError as exc:
        parser.error(str(exc))
    if args.tokenizer is not None and args.upstream != "master":
        parser.error("--tokenizer: only with --upstream master (the pin's loaders crop long conversations)")
    start = time.perf_counter()
    per_split = {s: getattr(args, s) for s in SPLITS}
    try:
        if args.upstream == "master":
            count_tokens = estimated_tokens
            if args.tokenizer is not None:
                encode, _ = load_tokenizer(args.tokenizer)
                count_tokens = lambda text: len(encode(text))  # noqa: E731
            rows = write_hub_cache(out, seed=args.seed, lengths=lengths, progress=print, counts=per_split,
                                   count_tokens=count_tokens)
            summary = (f"{rows['smoltalk/train']} training and {rows['smoltalk/test']} validation conversations in "
                       f"master's dataset cache {out / 'task_data'} (seed {args.seed})")
        else:
            counts = write_task_dir(out, seed=args.seed, lengths=lengths, progress=print, **per_split)
            size = sum((out / name).stat().st_size for name in counts)
            summary = (f"{sum(counts.values())} conversations in {len(counts)} files, {size:,} bytes, in {out} "
                       f"(seed {args.seed}; {MIN_TOKENS}..{lengths.max_tokens} tokens each at ~{CHARS_PER_TOKEN:g} "
                       "chars/token)")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tasks: {summary} in {time.perf_counter() - start:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    raise SystemExit(main())
