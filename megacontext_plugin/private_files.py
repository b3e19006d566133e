"""Owner-only files and directories: what holds a conversation, or model state derived from one.

Session trees (their token ids are the conversation), telemetry runs and the MegaContext state
saved beside nanochat's checkpoints are created ``0600`` (files) and ``0700`` (directories)
whatever the umask, like nanochat's ``.mc_env``. A path that already exists keeps its mode: never
loosened, and never changed behind a user who chose it (a file replaced atomically takes the mode
of the one it replaces).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``: every directory it creates is ``0700``; existing ones are left as they are."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: its mode stays
            directory.mkdir(mode=PRIVATE_DIR)
    return path


def replacement_mode(target: str | os.PathLike[str]) -> int:
    """The mode for a file that will replace ``target`` (temp file + ``os.replace``): ``target``'s own
    mode when it exists, else ``0600``."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return PRIVATE_FILE


def open_private(path: str | os.PathLike[str], flags: int, mode: int = PRIVATE_FILE) -> int:
    """``os.open`` creating ``path`` with ``mode`` (``0600``); an existing file keeps its own mode."""
    return os.open(path, flags, mode)


def private_binary_file(path: str | os.PathLike[str], how: str, mode: int = PRIVATE_FILE) -> IO[bytes]:
    """``open(path, how)`` for ``how`` in ``wb``/``ab``, a new file created with ``mode`` (``0600``)."""
    flags = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND}[how]
    return os.fdopen(open_private(path, flags, mode), how)
