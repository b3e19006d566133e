"""``megacontext demo``: the offline end-to-end run of the Foundation.

1. A long synthetic history (default one million tokens) with a planted *needle*: a paragraph
   of four aligned blocks of a token that occurs nowhere else, at a random depth.
2. The history is appended to a MegaContext tree (disk by default) in chunks, with progress.
   LOD0 embeddings come from a fixed random table (the stand-in for a model's ``wte``); gists
   are mean-pooled (the stand-in for an untrained GistNet).
3. A working context of at most ``--budget`` entries starts at the coarsest legal layout.
4. The focus allocator refocuses it with a query scorer (utility = z-score of each entry's
   centred cosine with the needle's embedding; LensNet takes this role once trained) until the
   needle is raw in the working context or no edit is left.
5. The disk tree is reopened and checked against what was appended.

Prints a progress line per phase and a timing summary; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .context import TreeSource, WorkingContext
from .focus import FocusAllocator, FocusConfig
from .tree import TREE_KINDS, TreeError, open_tree
from .tree.building import check_block_size, mean_pool_gist

NEEDLE_TOKEN = 0
"""Token id reserved for the needle: the haystack never uses it."""


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="offline end-to-end run: tree, working context, focus allocator")
    p.add_argument("--tokens", type=_positive, default=1_000_000, help="history length (default 1,000,000)")
    p.add_argument("--budget", type=_positive, default=1024, help="working-context entries (default 1024)")
    p.add_argument("--block-size", "--block_size", type=_power_of_two, default=32, help="K (default 32)")
    p.add_argument("--dim", type=_positive, default=256, help="embedding width (default 256)")
    p.add_argument("--vocab", type=_positive, default=8192, help="haystack vocabulary (default 8192)")
    p.add_argument("--recent-tokens", "--recent_tokens", type=int, default=256, help="protected raw tail")
    p.add_argument("--tree", choices=TREE_KINDS, default="disk", help="tree backend (default disk)")
    p.add_argument("--dir", type=Path, default=None, help="disk tree directory (default: a temporary one)")
    p.add_argument("--refocus", type=_positive, default=8, help="most refocus rounds (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; expected a positive integer")
    return value


def _power_of_two(text: str) -> int:
    """``--block-size``: the tree's own rule (``tree.building.check_block_size``), as an argparse type."""
    try:
        return check_block_size(_positive(text))
    except TreeError:
        raise argparse.ArgumentTypeError(f"got {text}; allowed: a power of two >= 2") from None


NEEDLE_BLOCKS = 4
"""The needle is a paragraph of this many aligned blocks (inside one level-2 node)."""


def _history(tokens: int, block_size: int, vocab: int, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Token ids ``[tokens]`` (haystack ids in ``[1, vocab)``) and the needle's token span."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=tokens, dtype=np.int64)
    groups = tokens // (block_size * NEEDLE_BLOCKS)
    group = int(rng.integers(groups // 10, max(groups // 10 + 1, groups * 6 // 10)))
    span = (group * NEEDLE_BLOCKS * block_size, (group + 1) * NEEDLE_BLOCKS * block_size)
    ids[span[0]:span[1]] = NEEDLE_TOKEN
    return ids, span


def _fail(message: str) -> int:
    """A user mistake: one line on stderr, exit 2, nothing written."""
    print(f"megacontext demo: error: {message}", file=sys.stderr)
    return 2


def _check_dir(path: Path) -> str | None:
    """Why ``--dir`` cannot hold a new tree, or None (it is created, empty, when missing)."""
    if path.exists():
        if not path.is_dir():
            return f"--dir {path} is not a directory"
        if any(path.iterdir()):
            return f"--dir {path} is not empty; the demo writes a new tree there"
        return None
    try:
        path.mkdir(parents=True)
    except OSError as e:
        return f"--dir {path} cannot be created ({e.strerror or e})"
    return None


def run_demo(args: argparse.Namespace) -> int:
    K = args.block_size
    if args.tokens < 8 * NEEDLE_BLOCKS * K:
        return _fail(f"--tokens must be at least {8 * NEEDLE_BLOCKS} x --block-size ({8 * NEEDLE_BLOCKS * K})")
    if args.recent_tokens < 0 or args.recent_tokens >= args.budget:
        return _fail(f"--recent-tokens must be in [0, --budget) = [0, {args.budget})")
    if args.vocab < 2:
        return _fail(f"--vocab must be at least 2 (token {NEEDLE_TOKEN} is the needle's; the haystack needs another)")
    if args.tree == "disk" and args.dir is not None and (why := _check_dir(args.dir)) is not None:
        return _fail(why)
    timings: dict[str, float] = {}
    torch.manual_seed(args.seed)
    table_VD = torch.randn(args.vocab, args.dim)

    def embed_fn(ids_N: torch.Tensor) -> torch.Tensor:
        return table_VD[ids_N]

    ids, needle_span = _history(args.tokens, K, args.vocab, args.seed)
    print(f"history: {args.tokens:,} tokens, K={K}, D={args.dim}; needle at tokens "
          f"[{needle_span[0]:,}, {needle_span[1]:,}) ({needle_span[0] / args.tokens:.0%} deep)")

    tmp = None
    path = None
    if args.tree == "disk":
        if args.dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="megacontext-demo-"))
            path = tmp / "tree"
        else:
            path = args.dir
    try:
        ok = _run(args, ids, needle_span, embed_fn, path, timings)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print("summary: " + ", ".join(f"{k} {v:,.1f} ms" for k, v in timings.items()))
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


def _run(args: argparse.Namespace, ids: np.ndarray, needle_span: tuple[int, int], embed_fn, path: Path | None,
         timings: dict[str, float]) -> bool:
    K, N = args.block_size, args.tokens
    tree = open_tree(args.tree, block_size=K, dim=args.dim, embed_fn=embed_fn, gist_fn=mean_pool_gist,
                     path=path, fsync="interval")
    t0 = time.perf_counter()
    chunk = 1 << 16
    ids_t = torch.from_numpy(ids)
    for start in range(0, N, chunk):
        tree.append(ids_t[start:start + chunk])
        done = min(N, start + chunk)
        if done == N or (start // chunk) % 4 == 3:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"  append: {done:>12,} / {N:,} tokens  {rate / 1e6:6.2f} M tok/s")
    tree.flush()
    timings["append"] = (time.perf_counter() - t0) * 1e3
    print(f"tree ({args.tree}): levels {[tree.level_size(k) for k in range(tree.num_levels)]}")

    mean_D = table_mean(embed_fn, args.vocab)
    query_D = embed_fn(torch.tensor([NEEDLE_TOKEN]))[0] - mean_D
    query_D = query_D / query_D.norm()

    source = TreeSource(tree)

    def scorer(wc: WorkingContext) -> np.ndarray:
        """z-score of each entry's centred cosine with the query under the null of random tokens.

        A centred gist of random tokens points in a random direction whatever its span, so its
        cosine with the query has standard deviation ``1/sqrt(D)`` at every level; the needle's
        node stands out by about ``n / sqrt(n**2 + span)`` of cosine (``n`` needle tokens under it).
        Utility = z / 4, clipped.
        """
        emb_WD = source.gather(np.zeros(len(wc), dtype=np.int64), wc.levels, wc.indices).float() - mean_D
        cos_W = (emb_WD @ query_D) / emb_WD.norm(dim=1).clamp_min(1e-6)
        return (cos_W * math.sqrt(args.dim) / 4).clamp(-1, 1).numpy()

    wc = WorkingContext.coarsest(N, K, args.recent_tokens)
    if len(wc) > args.budget:
        print(f"error: --budget {args.budget} cannot hold {N:,} tokens: the coarsest layout needs {len(wc)} entries")
        return False
    focus = FocusAllocator(FocusConfig(budget=args.budget, expand_threshold=0.5, collapse_threshold=0.5,
                                       max_replacements=4, iterations=1, recent_tokens=args.recent_tokens,
                                       seed=args.seed))
    print(f"working context: {len(wc)} entries at start (budget {args.budget}), levels {_histogram(wc)}")
    t1 = time.perf_counter()
    found = False
    for round_ in range(1, args.refocus + 1):
        wc, report = focus.refocus(wc, scorer)
        wc.validate(recent_tokens=args.recent_tokens, budget=args.budget)
        found = _needle_raw(wc, needle_span)
        print(f"  refocus {round_}: +{report.expands} expands, -{report.collapses} collapses, {len(wc)} entries, "
              f"levels {_histogram(wc)}, needle level {_needle_level(wc, needle_span)}, "
              f"bookkeeping {report.bookkeeping_ms:.2f} ms, scorer {report.scorer_ms:.1f} ms")
        if found or report.expands + report.collapses == 0:
            break
    timings["refocus"] = (time.perf_counter() - t1) * 1e3
    print(f"needle raw in the working context: {'yes' if found else 'no'}")
    if not found:
        level = _needle_level(wc, needle_span)
        print(f"  hint: the needle's level-{level} node averages {K ** level:,} tokens; a mean-pooled gist keeps a "
              f"signal of about sqrt(D) * {NEEDLE_BLOCKS * K} / sqrt(span) standard deviations, too little here. "
              f"Raise --dim or lower --tokens; a trained GistNet and LensNet are what remove this limit.")

    ok = found
    if args.tree == "disk":
        expected = tree.level_slice(1, 0, tree.level_size(1)).clone() if tree.level_size(1) else None
        tree.close()
        t2 = time.perf_counter()
        reopened = open_tree("disk", block_size=K, dim=args.dim, embed_fn=embed_fn, gist_fn=mean_pool_gist,
                             path=path)
        same = reopened.num_tokens == N and torch.equal(reopened.token_ids(0, N), torch.from_numpy(ids))
        if expected is not None:
            same = same and torch.equal(reopened.level_slice(1, 0, reopened.level_size(1)), expected)
        reopened.close()
        timings["reopen"] = (time.perf_counter() - t2) * 1e3
        print(f"reopen: {'all ' + format(N, ',') + ' tokens and their gists are back' if same else 'MISMATCH'}")
        ok = ok and same
    else:
        tree.close()
    return ok


def table_mean(embed_fn, vocab: int) -> torch.Tensor:
    """Mean embedding of the haystack vocabulary ``[D]`` (what every long gist tends to)."""
    return embed_fn(torch.arange(1, vocab)).float().mean(dim=0)


def _histogram(wc: WorkingContext) -> list[int]:
    return np.bincount(wc.levels).tolist() if len(wc) else []


def _covering(wc: WorkingContext, span: tuple[int, int]) -> np.ndarray:
    return (wc.starts < span[1]) & (wc.ends > span[0])


def _needle_level(wc: WorkingContext, span: tuple[int, int]) -> int:
    return int(wc.levels[_covering(wc, span)].max())


def _needle_raw(wc: WorkingContext, span: tuple[int, int]) -> bool:
    return _needle_level(wc, span) == 0
