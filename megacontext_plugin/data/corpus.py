"""Write a small offline corpus as nanochat-style parquet shards.

Layout read by nanochat's ``dataset.py``/``dataloader.py``: a directory of ``shard_NNNNN.parquet``
files, each with a ``text`` column (one document per row) split into several row groups; the LAST
shard is the validation split. Each shard is written to ``shard_NNNNN.parquet.tmp`` (which nanochat's
listing ignores) and renamed into place. A ``kind`` column records which task made each row.

Usage: ``python -m megacontext_plugin.data.corpus --out DIR [--shards N] [--docs-per-shard N] [--seed S]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megacontext_plugin.data import stdlib_text, tasks

from .arguments import int_at_least

DEFAULT_MIX: dict[str, float] = {"passkey": 0.3, "recall": 0.2, "copy": 0.2, "filler": 0.3}
KINDS = ("passkey", "recall", "copy", "filler", "python")
"""``python``: a chunk of a standard-library source file of the seed's training split (``stdlib_text``)."""
MARKER_KEY = b"megacontext_corpus"
MARKER_VALUE = b"1"
_SHARD = re.compile(r"^shard_(\d{5})\.parquet$")
_TMP = re.compile(r"^shard_\d{5}\.parquet\.tmp$")


def _parquet() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, imported on first use with a clear message if missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("writing or reading parquet shards needs pyarrow: pip install pyarrow") from exc
    return pa, pq


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


@dataclass(frozen=True)
class CorpusSummary:
    out_dir: str
    shards: tuple[str, ...]  # file names, sorted; the last one is the validation split
    documents: int
    characters: int
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def val_shard(self) -> str:
        return self.shards[-1]

    def format(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in self.kinds.items())
        return (
            f"wrote {len(self.shards)} shards ({len(self.shards) - 1} train + 1 val: {self.val_shard}) to "
            f"{self.out_dir}: {self.documents} documents, {self.characters} characters "
            f"(~{tasks.approx_tokens(self.characters)} tokens); {kinds}"
        )




def _document(kind: str, rng: np.random.Generator, num_chars: int, python_files: Sequence[Path] = ()) -> str:
    if kind == "python":
        return stdlib_text.chunk(rng, python_files, num_chars)
    depth = float(rng.uniform(0.0, 1.0))
    if kind == "passkey":
        return tasks.make_passkey(rng, num_chars, depth=depth, digits=int(rng.integers(3, 7))).text
    if kind == "recall":
        return tasks.make_recall(rng, num_chars, num_pairs=int(rng.integers(2, 5)), depth=depth * 0.5).text
    if kind == "copy":
        first = depth * 0.5
        return tasks.make_copy(rng, num_chars, int(rng.integers(6, 17)), first, float(rng.uniform(first, 1.0))).text
    return tasks.make_filler_document(rng, num_chars)


TokenCodec = tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]
"""``(encode, decode)`` of a tokenizer without its special tokens."""


def load_tokenizer(tokenizer_dir: str | os.PathLike[str]) -> TokenCodec:
    """The ``tokenizer.pkl`` nanochat's ``tok_train`` writes (a tiktoken encoding) as ``(encode, decode)``."""
    path = Path(tokenizer_dir) / "tokenizer.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the tokenizer first (scripts.tok_train)")
    with path.open("rb") as f:
        enc = pickle.load(f)
    return enc.encode_ordinary, enc.decode


def fit_to_tokens(text: str, num_tokens: int, codec: TokenCodec) -> str | None:
    """``text`` with its front cut so that it encodes to exactly ``num_tokens`` tokens (the end, where a
    task's question and answer are, is kept); None when it is too short or no cut lands exactly."""
    encode, decode = codec
    for _ in range(8):
        ids = encode(text)
        if len(ids) == num_tokens:
            return text
        if len(ids) < num_tokens:
            return None
        text = decode(ids[len(ids) - num_tokens:])
    return None


def generate_documents(
    seed: int, shard: int, count: int, mix: Mapping[str, float], chars: tuple[int, int],
    python_files: Sequence[Path] = (),
) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` for each document of one shard; each document has its own seeded stream
    (``python`` documents are drawn from ``python_files``)."""
    names, probs = tasks.mix_probabilities(mix, KINDS, "document kinds")
    for i in range(count):
        rng = np.random.default_rng([seed, shard, i])
        kind = names[int(rng.choice(len(names), p=probs))]
        yield kind, _document(kind, rng, int(rng.integers(chars[0], chars[1] + 1)), python_files)


def generate_token_documents(
    seed: int, shard: int, count: int, mix: Mapping[str, float], num_tokens: int, codec: TokenCodec,
    python_files: Sequence[Path] = (),
) -> Iterator[tuple[str, str]]:
    """Like ``generate_documents``, every document exactly ``num_tokens`` tokens long (``fit_to_tokens``):
    with ``num_tokens`` = nanochat's ``max_seq_len``, each training row (BOS + the document) is one whole
    document, so a task's answer ends the row, where the controller scores its working contexts."""
    names, probs = tasks.mix_probabilities(mix, KINDS, "document kinds")
    sample = tasks.make_filler_document(np.random.default_rng([seed, 99]), 4000)
    chars = int(num_tokens * len(sample) / max(1, len(codec[0](sample))) * 1.3) + 64  # room for the cut
    for i in range(count):
        rng = np.random.default_rng([seed, shard, i])
        kind = names[int(rng.choice(len(names), p=probs))]
        for _ in range(16):
            text = fit_to_tokens(_document(kind, rng, chars, python_files), num_tokens, codec)
            if text is not None:
                yield kind, text
                break


def _prepare_dir(out: Path) -> None:
    """Create ``out`` or check it holds only shards this module wrote (then delete them)."""
    _, pq = _parquet()

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    ours: list[Path] = []
    foreign: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.is_file() and _TMP.match(entry.name):
            ours.append(entry)
            continue
        if entry.is_file() and _SHARD.match(entry.name):
            try:
                meta = pq.read_schema(entry).metadata or {}
            except Exception:  # unreadable parquet: not ours
                meta = {}
            if meta.get(MARKER_KEY) == MARKER_VALUE:
                ours.append(entry)
                continue
        foreign.append(entry.name)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"refusing to write into {out}: it holds files this generator did not write ({shown}); "
            "use an empty or new directory"
        )
    for path in ours:  # stale shards beyond the new count would otherwise become the val split
        path.unlink()


def _write_shard(path: Path, docs: Sequence[tuple[str, str]], row_groups: int) -> None:
    pa, pq = _parquet()
    schema = pa.schema([("text", pa.string()), ("kind", pa.string())], metadata={MARKER_KEY: MARKER_VALUE})
    tmp = path.with_name(path.name + ".tmp")
    bounds = np.linspace(0, len(docs), min(row_groups, len(docs)) + 1).round().astype(int)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for lo, hi in itertools.pairwise(bounds):
                chunk = docs[lo:hi]
                table = pa.table({"text": [t for _, t in chunk], "kind": [k for k, _ in chunk]}, schema=schema)
                writer.write_table(table, row_group_size=len(chunk))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_corpus(
    out_dir: str | os.PathLike[str],
    num_shards: int = 4,
    docs_per_shard: int = 64,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
    *,
    row_groups: int = 4,
    min_chars: int = 1000,
    max_chars: int = 4000,
    warmup_shards: int = 0,
    warmup_max_chars: int = 0,
    doc_tokens: int = 0,
    tokenizer: TokenCodec | None = None,
    split_seed: int = 0,
    train_files_out: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CorpusSummary:
    """Write ``num_shards`` shards (the last is validation) of ``docs_per_shard`` documents each.

    The first ``warmup_shards`` training shards hold documents of ``[max(400, warmup_max_chars // 2),
    warmup_max_chars]`` characters: nanochat reads shards in order, so a run starts on short documents
    (retrieval is learned with fewer distractors first). A ``python`` share in ``mix`` draws chunks of
    the standard library's training split (``stdlib_text.split(split_seed)``: its own seed, so that
    corpora of one run written with different ``seed`` share one split); ``train_files_out`` gets that
    list of files. With ``doc_tokens`` (and the run's ``tokenizer``) the shards after the warm-up hold
    documents of exactly that many tokens (``generate_token_documents``)."""
    for name, value, lo in (
        ("num_shards", num_shards, 2),
        ("docs_per_shard", docs_per_shard, 1),
        ("seed", seed, 0),
        ("row_groups", row_groups, 1),
        ("min_chars", min_chars, 400),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if not isinstance(max_chars, int) or max_chars < min_chars:
        raise ValueError(f"max_chars must be an int >= min_chars ({min_chars}), got {max_chars!r}")
    mix = DEFAULT_MIX if mix is None else mix
    tasks.mix_probabilities(mix, KINDS, "document kinds")
    if warmup_shards and not (warmup_max_chars >= 400 and warmup_shards < num_shards - 1):
        raise ValueError(f"warm-up shards need warmup_max_chars >= 400 and leave a long training shard "
                         f"(got {warmup_shards} of {num_shards} shards, max {warmup_max_chars} chars)")
    if doc_tokens and tokenizer is None:
        raise ValueError("doc_tokens needs the run's tokenizer")
    python_files: tuple[Path, ...] = ()
    if mix.get("python", 0) > 0:
        python_files = stdlib_text.split(split_seed)[0]
        if not python_files:
            raise ValueError(f"no standard-library source files under {stdlib_text.stdlib_root()}")
    out = Path(out_dir)
    _prepare_dir(out)
    if train_files_out is not None:
        stdlib_text.write_file_list(Path(train_files_out), python_files)
    names: list[str] = []
    kinds = dict.fromkeys(KINDS, 0)
    documents = characters = 0
    for s in range(num_shards):
        if s < warmup_shards:
            chars = (max(400, warmup_max_chars // 2), warmup_max_chars)
            docs = list(generate_documents(seed, s, docs_per_shard, mix, chars, python_files))
        elif doc_tokens and tokenizer is not None:
            docs = list(generate_token_documents(seed, s, docs_per_shard, mix, doc_tokens, tokenizer, python_files))
        else:
            docs = list(generate_documents(seed, s, docs_per_shard, mix, (min_chars, max_chars), python_files))
        _write_shard(out / shard_name(s), docs, row_groups)
        names.append(shard_name(s))
        documents += len(docs)
        characters += sum(len(t) for _, t in docs)
        for k, _ in docs:
            kinds[k] += 1
        if progress is not None:
            split = "val" if s == num_shards - 1 else "train"
            progress(f"[{s + 1}/{num_shards}] {shard_name(s)} ({split}): {len(docs)} documents")
    return CorpusSummary(str(out), tuple(names), documents, characters, {k: v for k, v in kinds.items() if v})


DESCRIPTION = "Write a seeded long-context corpus as nanochat-style parquet shards (last shard = val)."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megacontext_plugin.data.corpus", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The corpus flags (shared by ``python -m ...corpus`` and ``megacontext corpus``)."""
    p.add_argument("--out", required=True, help="output directory (new, empty, or holding only our shards)")
    p.add_argument("--shards", type=int_at_least(2), default=4, help="number of shards, >= 2 (default 4)")
    p.add_argument("--docs-per-shard", type=int_at_least(1), default=64, help="documents per shard (default 64)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--row-groups", type=int_at_least(1), default=4, help="row groups per shard (default 4)")
    p.add_argument("--min-chars", type=int_at_least(400), default=1000, help="shortest document (default 1000)")
    p.add_argument("--max-chars", type=int_at_least(400), default=4000, help="longest document (default 4000)")
    p.add_argument("--mix", type=parse_mix, default=None,
                   help=f"document kinds and weights, e.g. passkey=0.4,recall=0.3,python=0.3 (kinds: "
                        f"{', '.join(KINDS)}; python: chunks of the standard library's source, a seeded split of "
                        f"its files; default {','.join(f'{k}={v}' for k, v in DEFAULT_MIX.items())})")
    p.add_argument("--warmup-shards", type=int_at_least(0), default=0,
                   help="the first N shards hold short documents (nanochat reads shards in order: a run starts on "
                        "them)")
    p.add_argument("--warmup-max-chars", type=int_at_least(400), default=1000,
                   help="longest warm-up document (the shortest is half of it, at least 400; default 1000)")
    p.add_argument("--doc-tokens", type=int_at_least(64), default=None,
                   help="with --tokenizer: the shards after the warm-up hold documents of exactly this many tokens "
                        "(nanochat's --max-seq-len: one whole document per training row, its answer at the row's "
                        "end; --min-chars/--max-chars then do not apply)")
    p.add_argument("--tokenizer", default=None,
                   help="the run's tokenizer directory (tok_train's, holding tokenizer.pkl), for --doc-tokens")
    p.add_argument("--split-seed", type=int_at_least(0), default=0,
                   help="seed of the standard library's train/held-out split of files (default 0)")
    p.add_argument("--train-files-out", default=None,
                   help="write the standard-library files the python documents come from here, one per line")


def parse_mix(raw: str) -> dict[str, float]:
    """``kind=weight,kind=weight`` (an argparse ``type``; the kinds and weights are checked as a whole)."""
    mix: dict[str, float] = {}
    for item in raw.split(","):
        kind, sep, weight = item.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[kind.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected kind=weight pairs separated by commas, got {raw!r}") from None
    try:
        tasks.mix_probabilities(mix, KINDS, "document kinds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return mix


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write the corpus from parsed flags; exit status 0, or 1 with one error line."""
    if args.max_chars < args.min_chars:
        parser.error(f"--max-chars ({args.max_chars}) must be >= --min-chars ({args.min_chars})")
    if (args.doc_tokens is None) != (args.tokenizer is None):
        parser.error("--doc-tokens and --tokenizer go together")
    try:
        tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
        summary = write_corpus(
            args.out,
            args.shards,
            args.docs_per_shard,
            args.seed,
            mix=args.mix,
            row_groups=args.row_groups,
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            warmup_shards=args.warmup_shards,
            warmup_max_chars=args.warmup_max_chars,
            doc_tokens=args.doc_tokens or 0,
            tokenizer=tokenizer,
            split_seed=args.split_seed,
            train_files_out=args.train_files_out,
            progress=print,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
