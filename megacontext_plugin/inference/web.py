"""What nanochat's ``chat_web`` needs from ``--mc`` besides decoding: who may share a named session,
and how long a conversation it accepts.

- **A named session is one history.** Every client of the server would read what the others said
  (their messages are in the working context of its answers) and add to it. ``chat_web`` refuses
  ``--mc_session`` unless it binds only to loopback (one person's machine) or the user passes
  ``--mc_session_shared_by_all_clients``. Per-person memory over the web (a session chosen by a
  secret each client holds) is not supported: nanochat's web API carries no client identity.
- **Conversation limits.** Upstream caps a conversation at 32,000 characters and a message at
  8,000, about 4x a depth-20 model's window. With ``--mc`` both become ``--mc_web_max_chars``
  (a pasted document may be the whole conversation), by default what this machine can hold
  (:func:`auto_char_limit`), never less than upstream's.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
from pathlib import Path

from ..config import ConfigError, MCConfig
from .runtime import default_tree_dir

MEMORY_SHARE = 0.25
"""Of the memory available (or, for disk trees, the disk space free) when the server starts, the
share the held sessions may fill with conversations at the limit."""
REQUEST_BYTES_PER_TOKEN = 160
"""What ``chat_web`` itself holds per token of the request it is computing: the JSON body and
message strings, the token list (a Python int per token) and the plugin's tensor copy."""
TOKENS_PER_CHAR = 1
"""Tokens per character assumed by the limit: at most one for text in Latin scripts; text made of
4-byte characters may take up to 4, which :data:`MEMORY_SHARE` leaves room for."""


def serves_web(args: argparse.Namespace) -> bool:
    """Whether the chat script that parsed ``args`` is ``chat_web`` (the one with a bind address)."""
    return hasattr(args, "host") and hasattr(args, "port")


def binds_loopback(host: str) -> bool:
    """Whether ``host`` (``--host``) is a loopback address or ``localhost``: only this machine can connect."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to any interface
        return False


def check_web_arguments(cfg: MCConfig, args: argparse.Namespace) -> None:
    """``ConfigError`` (one line) for a ``chat_web`` setup that would leak a history or cannot serve."""
    host = str(getattr(args, "host", ""))
    if cfg.mc_session and not cfg.mc_session_shared_by_all_clients and not binds_loopback(host):
        raise ConfigError(
            f"--mc_session {cfg.mc_session}: chat_web on --host {host} would give every client that reaches it "
            f"one shared history (each would see what the others said); bind to loopback (--host 127.0.0.1), drop "
            f"--mc_session (each conversation gets its own session), or pass --mc_session_shared_by_all_clients")
    workers = int(getattr(args, "num_gpus", 1) or 1)
    if workers > 1:
        raise ConfigError(f"--num-gpus {workers}: chat_web with --mc serves from one worker (its sessions live "
                          f"beside one model); use --num-gpus 1")


def tree_bytes_per_token(dim: int, block_size: int) -> float:
    """A tree's bytes per token of history: an int32 id and its share of fp32 gists at every level
    (``4 * D / (K - 1)``)."""
    return 4 + 4 * dim / (block_size - 1)


def auto_char_limit(cfg: MCConfig, dim: int, available_bytes: int, free_disk_bytes: int | None) -> int:
    """Characters per conversation that the held sessions (``--mc_max_sessions`` unnamed, plus a
    named one) can hold at once within :data:`MEMORY_SHARE` of the memory (RAM trees: buffers
    that double, so twice the tree) or of the free disk (disk trees), besides the request itself."""
    sessions = cfg.mc_max_sessions + (1 if cfg.mc_session else 0)
    per_token = tree_bytes_per_token(dim, cfg.block_size)
    if cfg.mc_tree == "ram":
        tokens = MEMORY_SHARE * available_bytes / (2 * sessions * per_token + REQUEST_BYTES_PER_TOKEN)
    else:
        tokens = MEMORY_SHARE * available_bytes / REQUEST_BYTES_PER_TOKEN
        if free_disk_bytes is not None:
            tokens = min(tokens, MEMORY_SHARE * free_disk_bytes / (sessions * per_token))
    return int(tokens / TOKENS_PER_CHAR)


def available_memory_bytes() -> int:
    """Memory available to new allocations without swapping (``MemAvailable`` of ``/proc/meminfo``;
    the free pages where that file is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk_bytes(cfg: MCConfig) -> int | None:
    """Free bytes on the file system of the disk trees (None for RAM trees)."""
    if cfg.mc_tree != "disk":
        return None
    probe = default_tree_dir(cfg)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(Path(probe)).free


def web_char_limit(cfg: MCConfig, dim: int, upstream_chars: int) -> tuple[int, str]:
    """Characters per conversation (and per message) ``chat_web`` accepts with ``--mc``, and where
    the number comes from (for the server's log)."""
    if cfg.mc_web_max_chars:
        return cfg.mc_web_max_chars, "--mc_web_max_chars"
    auto = auto_char_limit(cfg, dim, available_memory_bytes(), free_disk_bytes(cfg))
    if auto <= upstream_chars:
        return upstream_chars, "upstream's limit: this machine holds no more"
    where = "memory" if cfg.mc_tree == "ram" else "memory and disk"
    return auto, (f"what {cfg.mc_max_sessions} sessions' {cfg.mc_tree} trees can hold in a quarter of the {where} "
                  f"free now; --mc_web_max_chars sets it")
