"""Turn working contexts into the base model's inputs with one tree gather per level.

``materialise(wc, tree)`` gives one row; ``materialise_batch(wcs, trees)`` stacks rows of
different layouts and lengths, padded to a common width with a mask. Vectors come from
``tree.embeddings(level, indices)`` (the ``MCTree`` protocol): one call per level present (per
distinct tree), then one ``index_select``/``index_copy`` puts every row where it belongs, so
autograd sees a handful of ops whatever the number of entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..tree.protocol import MCTree
from .positions import entry_positions
from .working_context import WorkingContext, WorkingContextError

PAD_LEVEL = -1
"""``levels`` value of padding slots in a batch (starts, ends and positions pad with 0)."""


class Materialised(NamedTuple):
    """One working context ready for the base model (all tensors on the embeddings' device)."""

    embeddings: torch.Tensor
    """``[W, D]``: the vector of every entry (token embedding or gist)."""
    levels: torch.Tensor
    """``[W]`` int64."""
    starts: torch.Tensor
    """``[W]`` int64: first token of each entry."""
    ends: torch.Tensor
    """``[W]`` int64: one past the last token of each entry."""
    positions: torch.Tensor
    """``[W]``: position of each entry under the chosen scheme (int64 for ``ordinal``; float32 for
    schemes with fractional positions)."""


class MaterialisedBatch(NamedTuple):
    """Rows of different layouts stacked to ``W_max`` entries; ``mask`` marks real entries."""

    embeddings: torch.Tensor
    """``[B, W_max, D]``; padding rows are zeros."""
    levels: torch.Tensor
    """``[B, W_max]`` int64; padding is ``PAD_LEVEL`` (-1)."""
    starts: torch.Tensor
    """``[B, W_max]`` int64; padding is 0."""
    ends: torch.Tensor
    """``[B, W_max]`` int64; padding is 0."""
    positions: torch.Tensor
    """``[B, W_max]`` (dtype as in ``Materialised``); padding is 0."""
    mask: torch.Tensor
    """``[B, W_max]`` bool: True for real entries, False for padding."""


def _check_tree(wc: WorkingContext, tree: MCTree) -> None:
    if tree.block_size != wc.block_size:
        raise WorkingContextError(
            f"tree block_size {tree.block_size} does not match the working context's {wc.block_size}"
        )
    if tree.num_tokens < wc.num_tokens:
        raise WorkingContextError(
            f"the working context covers {wc.num_tokens} tokens but the tree holds only {tree.num_tokens}"
        )


def gather_entries(tree: MCTree, levels_n: np.ndarray, indices_n: np.ndarray) -> torch.Tensor:
    """Vectors ``[n, D]`` of nodes ``(levels_n[n], indices_n[n])``: one tree call per level present."""
    n = int(levels_n.shape[0])
    if n == 0:  # still ask the tree, so that dtype and device are the tree's
        return tree.embeddings(0, torch.zeros(0, dtype=torch.int64)).reshape(0, tree.dim)
    order_n = np.argsort(levels_n, kind="stable")  # entries grouped by level
    counts = np.bincount(levels_n.astype(np.int64))
    parts: list[torch.Tensor] = []
    offset = 0
    for level in np.flatnonzero(counts).tolist():
        sel = order_n[offset : offset + counts[level]]
        offset += int(counts[level])
        vectors = tree.embeddings(level, torch.from_numpy(np.ascontiguousarray(indices_n[sel])))
        if vectors.shape != (sel.shape[0], tree.dim):
            raise WorkingContextError(
                f"tree.embeddings(level={level}) returned shape {tuple(vectors.shape)}, "
                f"expected ({sel.shape[0]}, {tree.dim})"
            )
        parts.append(vectors)
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    grouped = torch.cat([part.to(dtype) for part in parts]) if len(parts) > 1 else parts[0]
    inverse_n = np.empty_like(order_n)
    inverse_n[order_n] = np.arange(n)
    return grouped.index_select(0, torch.from_numpy(inverse_n).to(grouped.device))


def materialise(wc: WorkingContext, tree: MCTree, position_scheme: str = "ordinal") -> Materialised:
    """Embeddings and metadata of every entry of ``wc``, in order."""
    _check_tree(wc, tree)
    positions_W = entry_positions(wc, position_scheme)
    embeddings = gather_entries(tree, wc.levels, wc.indices)
    device = embeddings.device

    def as_tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.int64)).to(device)

    return Materialised(
        embeddings,
        as_tensor(wc.levels),
        as_tensor(wc.starts),
        as_tensor(wc.ends),
        torch.from_numpy(np.ascontiguousarray(positions_W)).to(device),
    )


def materialise_batch(
    wcs: Sequence[WorkingContext],
    tree_or_trees: MCTree | Sequence[MCTree],
    pad_to: int | None = None,
    position_scheme: str = "ordinal",
) -> MaterialisedBatch:
    """Stack ``B`` working contexts (any layouts and lengths) into ``[B, W_max, ...]`` tensors.

    ``tree_or_trees`` is one tree shared by every row or one tree per row. Rows that share a
    tree are gathered together: one ``tree.embeddings`` call per level per distinct tree.
    ``W_max`` is ``pad_to`` if given (it must be >= the longest row), else the longest row.
    """
    B = len(wcs)
    if B == 0:
        raise WorkingContextError("materialise_batch needs at least one working context")
    trees: list[MCTree] = list(tree_or_trees) if isinstance(tree_or_trees, list | tuple) else [tree_or_trees] * B
    if len(trees) != B:
        raise WorkingContextError(f"got {len(trees)} trees for {B} working contexts: pass one tree or one per row")
    for wc, tree in zip(wcs, trees, strict=True):
        _check_tree(wc, tree)
    lengths_B = np.array([len(wc) for wc in wcs], dtype=np.int64)
    width = int(lengths_B.max())
    if pad_to is not None:
        if pad_to < width:
            raise WorkingContextError(f"pad_to={pad_to} is shorter than the longest working context ({width})")
        width = int(pad_to)
    row_start_B = np.arange(B, dtype=np.int64) * width
    dest_rows = [row_start_B[r] + np.arange(lengths_B[r], dtype=np.int64) for r in range(B)]

    flat = B * width
    levels_F = np.full(flat, PAD_LEVEL, dtype=np.int64)
    starts_F = np.zeros(flat, dtype=np.int64)
    ends_F = np.zeros(flat, dtype=np.int64)
    dest_all = np.concatenate(dest_rows)
    levels_F[dest_all] = np.concatenate([wc.levels for wc in wcs])
    starts_F[dest_all] = np.concatenate([wc.starts for wc in wcs])
    ends_F[dest_all] = np.concatenate([wc.ends for wc in wcs])
    positions_all = np.concatenate([entry_positions(wc, position_scheme) for wc in wcs])
    positions_F = np.zeros(flat, dtype=positions_all.dtype)
    positions_F[dest_all] = positions_all

    groups: dict[int, list[int]] = {}  # rows by tree identity: one gather per level per tree
    for r, tree in enumerate(trees):
        groups.setdefault(id(tree), []).append(r)
    dests: list[np.ndarray] = []
    vectors: list[torch.Tensor] = []
    for rows in groups.values():
        tree = trees[rows[0]]
        vectors.append(
            gather_entries(
                tree,
                np.concatenate([wcs[r].levels for r in rows]),
                np.concatenate([wcs[r].indices for r in rows]),
            )
        )
        dests.append(np.concatenate([dest_rows[r] for r in rows]))
    dtype = vectors[0].dtype
    for v in vectors[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    device = vectors[0].device
    dim = trees[0].dim
    src = torch.cat([v.to(dtype=dtype, device=device) for v in vectors]) if len(vectors) > 1 else vectors[0]
    index = torch.from_numpy(np.concatenate(dests)).to(device)
    embeddings = torch.zeros(flat, dim, dtype=dtype, device=device).index_copy(0, index, src)

    def as_tensor(values_F: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values_F.reshape(B, width)).to(device)

    mask_F = np.zeros(flat, dtype=bool)
    mask_F[dest_all] = True
    return MaterialisedBatch(
        embeddings.view(B, width, dim),
        as_tensor(levels_F),
        as_tensor(starts_F),
        as_tensor(ends_F),
        as_tensor(positions_F),
        as_tensor(mask_F),
    )
