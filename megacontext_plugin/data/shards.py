"""How many FineWeb-Edu shards a nanochat pretraining run needs, by upstream's own arithmetic.

nanochat's ``speedrun.sh`` (at the pin) sizes its download in a comment: tokens x 4.8 characters per
token (its tokenizer) / 250M characters per shard, then divided by (1 - 0.35) because its dataloader
crops about 35% of the tokens it reads. :func:`shard_plan` does the same for any token budget
(``iterations x total batch size``, or ``params x data:param ratio`` as ``base_train`` computes it)
and adds the validation shard: ``python -m nanochat.dataset -n N`` downloads shards 0..N-1 and
nanochat reads the last one on disk as the validation split.

Standard library only: ``integration/run10.sh`` runs it with any ``python3`` before the venv exists.

Usage: ``python -m megacontext_plugin.data.shards --tokens 3093299200 [--count]`` (or ``megacontext shards``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

CHARS_PER_TOKEN = 4.8
"""speedrun.sh: 'Assume our tokenizer is 4.8 chars/token' (the 65,536-entry vocabulary)."""
CHARS_PER_SHARD = 250_000_000
"""speedrun.sh: 'each data shard is ~250M chars'."""
CROPPED = 0.35
"""speedrun.sh: 'the new DataLoader wastes about 35% of tokens to cropping'."""
AVAILABLE = 1823
"""nanochat.dataset: MAX_SHARD = 1822, so shards 0..1822 exist."""


@dataclass(frozen=True)
class ShardPlan:
    tokens: int
    exact: float  # training shards before rounding up
    train: int  # training shards: ceil(exact)
    total: int  # what to download (`nanochat.dataset -n total`): train + 1 validation, at most AVAILABLE

    def describe(self) -> str:
        """One line: the arithmetic and the count."""
        line = (f"{self.tokens:,} tokens x {CHARS_PER_TOKEN} chars/token / {CHARS_PER_SHARD:,} chars/shard / "
                f"(1 - {CROPPED} cropped) = {self.exact:.1f} -> {self.train} training shards + 1 validation = "
                f"{self.total} (nanochat.dataset -n {self.total})")
        if self.total < self.train + 1:
            line += f"; the dataset holds only {AVAILABLE:,} shards, so the run sees some data twice"
        return line


def shard_plan(tokens: int) -> ShardPlan:
    """The shards a pretraining run of ``tokens`` tokens reads (upstream's arithmetic), plus validation."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    exact = tokens * CHARS_PER_TOKEN / CHARS_PER_SHARD / (1 - CROPPED)
    train = math.ceil(round(exact, 9))  # 60.0000000001 from float noise is 60
    return ShardPlan(tokens=tokens, exact=exact, train=train, total=min(train + 1, AVAILABLE))


def _count(text: str) -> int:
    """A positive count: 3093299200, 3_093_299_200 or 3.1e9."""
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):  # NaN is not > 0
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return int(value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags (shared by ``python -m ...shards`` and ``megacontext shards``)."""
    p.add_argument("--tokens", type=_count, help="the run's pretraining tokens (iterations x total batch size)")
    p.add_argument("--params", type=_count, help="with --ratio: tokens = params x ratio, as base_train computes "
                                                 "them from its scaling parameters and --target-param-data-ratio")
    p.add_argument("--ratio", type=float, help="the data:param ratio (Chinchilla: 20)")
    p.add_argument("--count", action="store_true", help="print only the number of shards to download")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.params is None) != (args.ratio is None):
        parser.error("--params and --ratio go together")
    if (args.tokens is None) == (args.params is None):
        parser.error("give either --tokens or --params with --ratio")
    if args.ratio is not None and not args.ratio > 0:
        parser.error(f"--ratio must be positive, got {args.ratio}")
    tokens = args.tokens if args.tokens is not None else int(args.params * args.ratio)
    plan = shard_plan(tokens)
    print(plan.total if args.count else plan.describe())
    return 0


DESCRIPTION = ("How many pretraining shards a nanochat run needs: tokens x 4.8 chars/token / 250M chars/shard / "
               "(1 - 0.35 cropped), rounded up, plus the validation shard (upstream speedrun.sh's arithmetic).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megacontext_plugin.data.shards", description=DESCRIPTION)
    add_arguments(parser)

    def error(message: str) -> NoReturn:  # one line, as `megacontext shards` (arg_errors is a room above data)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
