"""The MegaContext tree: one protocol (``MCTree``), two backends (``ram``, ``disk``).

``open_tree(kind, ...)`` picks a backend by name (the ``--mc_tree`` value); ``build_levels`` is
the batched, differentiable builder used by training, equal to the incremental tree.
"""

from __future__ import annotations

import os

import torch

from .building import GIST_DTYPES, build_levels, cascade, mean_pool_gist
from .disk import FSYNC_POLICIES, DiskTree, FsyncPolicy, remove_if_closed
from .protocol import EmbedFn, GistFn, MCTree, TreeError, level_span, max_tree_level, nodes_at_level
from .ram import RamTree

TREE_KINDS: tuple[str, ...] = ("ram", "disk")
"""Allowed values of ``open_tree(kind=...)`` (and of ``--mc_tree``)."""


def open_tree(
    kind: str,
    *,
    block_size: int,
    dim: int,
    embed_fn: EmbedFn,
    gist_fn: GistFn,
    dtype: torch.dtype = torch.float32,
    gist_version: int | None = None,
    path: str | os.PathLike[str] | None = None,
    fsync: FsyncPolicy = "always",
    fsync_interval_s: float = 1.0,
) -> MCTree:
    """A new ``ram`` tree, or a ``disk`` tree at ``path`` (created, or reopened and checked).

    ``path``, ``fsync`` and ``fsync_interval_s`` concern the disk backend only; ``gist_version``
    defaults to the stored one (disk) or 0.
    """
    if kind == "ram":
        if path is not None:
            raise TreeError("the ram tree keeps no files: path= is only for kind='disk'")
        return RamTree(block_size, dim, embed_fn, gist_fn, dtype=dtype, gist_version=gist_version or 0)
    if kind == "disk":
        if path is None:
            raise TreeError("kind='disk' needs path= (the tree's directory)")
        return DiskTree(
            path,
            block_size,
            dim,
            embed_fn,
            gist_fn,
            dtype=dtype,
            gist_version=gist_version,
            fsync=fsync,
            fsync_interval_s=fsync_interval_s,
        )
    allowed = ", ".join(repr(k) for k in TREE_KINDS)
    raise TreeError(f"unknown tree kind {kind!r}: expected one of {allowed}")


__all__ = [
    "FSYNC_POLICIES",
    "GIST_DTYPES",
    "TREE_KINDS",
    "DiskTree",
    "EmbedFn",
    "FsyncPolicy",
    "GistFn",
    "MCTree",
    "RamTree",
    "TreeError",
    "build_levels",
    "cascade",
    "level_span",
    "max_tree_level",
    "mean_pool_gist",
    "nodes_at_level",
    "open_tree",
    "remove_if_closed",
]
