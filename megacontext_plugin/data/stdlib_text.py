"""Real long text on every machine: the Python source files of the running interpreter's standard library.

The quality recipe mixes chunks of these files into its pretraining corpus, and the evaluation's
``--documents`` measures NLL@H on files the run never trained on. Files are split by a seeded hash
of their path relative to the library root, so the split is the same on every machine with the same
Python version and needs no list shipped with the package; the run writes the files it trained on
(``corpus_train_files.txt``) so that an evaluation can refuse them.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

HELD_OUT_SHARE = 0.2
"""Share of the library's files that no recipe trains on (chosen by ``is_held_out``)."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Every ``*.py`` file of the standard library (no ``site-packages``), sorted by relative path."""
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts and p.is_file()]
    return tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def is_held_out(path: Path, seed: int, share: float = HELD_OUT_SHARE) -> bool:
    """Whether ``path`` (a library file) is in the held-out split of ``seed``: a hash of the seed and the
    path relative to the library root, so the split does not depend on which files exist."""
    rel = path.relative_to(stdlib_root()).as_posix()
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split(seed: int, share: float = HELD_OUT_SHARE) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """``(train, held_out)`` files of the library for ``seed``."""
    files = stdlib_files()
    held = tuple(p for p in files if is_held_out(p, seed, share))
    train = tuple(p for p in files if not is_held_out(p, seed, share))
    return train, held


@lru_cache(maxsize=4096)
def read_source(path: Path) -> str:
    """A source file's text (undecodable bytes replaced: the library has a few Latin-1 test files)."""
    return path.read_text(encoding="utf-8", errors="replace")


def chunk(rng: np.random.Generator, files: Sequence[Path], num_chars: int) -> str:
    """About ``num_chars`` characters of one file drawn from ``files``: whole lines from a random line
    on (a file shorter than that is taken whole; files too short to say anything are redrawn)."""
    for _ in range(64):
        text = read_source(files[int(rng.integers(len(files)))])
        if len(text) >= min(num_chars, 400):
            break
    lines = text.splitlines(keepends=True)
    if len(text) <= num_chars:
        return text
    ends = np.cumsum([len(line) for line in lines])
    last_start = int(np.searchsorted(ends, len(text) - num_chars))  # a start that still leaves num_chars
    first = int(rng.integers(0, last_start + 1))
    out, size = [], 0
    for line in lines[first:]:
        if size + len(line) > num_chars and out:
            break
        out.append(line)
        size += len(line)
    return "".join(out)


def write_file_list(path: Path, files: Iterable[Path]) -> None:
    """One path per line, relative to the library root (the run's ``corpus_train_files.txt``)."""
    root = stdlib_root()
    path.write_text("".join(f"{p.relative_to(root).as_posix()}\n" for p in files))
