"""Packing: the index tensors the controller's losses need for one set of variant layouts.

The variants' inputs, targets and rotary tables come from ``context.inputs.model_inputs`` (one
``index_select`` over the tree levels, the path evaluation and inference share); this module
keeps what only training needs: each entry's target position, the horizon's columns, and the
entries where two variants differ (the preference pairs). The target of an entry is the token
that follows its span, ``y[b, end - 1]`` (``y`` is ``x`` shifted by one); padding gets -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layouts import PAD_LEVEL, VariantLayouts


@dataclass(frozen=True)
class PackIndex:
    """Device index tensors for one layout set (reusable for any data of that shape)."""

    target_RW: torch.Tensor
    """Flat index into ``y.view(-1)`` of each entry's target (padding: 0, masked)."""
    valid_RW: torch.Tensor
    """True for real entries."""
    levels_RW: torch.Tensor
    spans_RW: torch.Tensor
    """Tokens covered by each entry (padding: 1)."""
    tail_RH: torch.Tensor
    """Column of each of the last H real entries of every row (all raw, in every variant)."""
    refined_BPW: torch.Tensor
    """For each sequence and pair ``p = (i, j)`` of random variants: gist entries of variant ``j``
    whose span variant ``i`` shows in finer detail (and ``refined_BPW`` of the swapped pair is
    stored as ``coarser_BPW``). These are the entries where the two variants differ."""
    coarser_BPW: torch.Tensor
    """Gist entries of variant ``i`` whose span variant ``j`` shows in finer detail."""


def level_sizes(sequence_len: int, block_size: int, num_levels: int) -> list[int]:
    return [sequence_len // block_size**level for level in range(num_levels)]


def build_index(layouts: VariantLayouts, sequence_len: int, block_size: int, num_levels: int, horizon: int,
                device: torch.device) -> PackIndex:
    """Index tensors for ``layouts`` over trees with ``num_levels`` levels (numpy work, then one copy)."""
    B, V = layouts.batch, layouts.variants
    valid = layouts.valid_RW
    row_b = (np.arange(B * V, dtype=np.int64) // V)[:, None]
    target = np.where(valid, row_b * sequence_len + layouts.ends_RW - 1, 0)
    spans = np.where(valid, layouts.ends_RW - layouts.starts_RW, 1)
    if np.any(layouts.lengths_R < horizon):
        raise ValueError(f"a variant has fewer than H={horizon} entries")
    tail = layouts.lengths_R[:, None] - horizon + np.arange(horizon, dtype=np.int64)[None, :]
    rows = np.arange(B * V)[:, None]
    if np.any(layouts.levels_RW[rows, tail] != 0):
        raise ValueError("the last H entries of every variant must be raw tokens")

    refined, coarser = _pair_differences(layouts, sequence_len)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)

    return PackIndex(dev(target), dev(valid), dev(np.where(valid, layouts.levels_RW, PAD_LEVEL)),
                     dev(spans), dev(tail), dev(refined), dev(coarser))


def pair_columns(num_random: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of random variants, as variant numbers ``1..V-1`` (0 is the baseline);
    the same order as ``losses.pair_indices``."""
    i, j = np.triu_indices(num_random, k=1)
    return i + 1, j + 1


def _pair_differences(layouts: VariantLayouts, sequence_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(refined[B, P, W], coarser[B, P, W])`` masks, see ``PackIndex``.

    A random variant tiles the sequence, so the level covering each token is one ``np.repeat``;
    a gist entry of one variant differs from the other exactly when the other covers its first
    token with a finer entry (aligned nodes nest, so finer at the start means finer throughout).
    """
    B, V, W = layouts.batch, layouts.variants, layouts.width
    ii, jj = pair_columns(V - 1)
    if ii.size == 0:
        empty = np.zeros((B, 0, W), dtype=bool)
        return empty, empty
    levels_BVW = layouts.levels_RW.reshape(B, V, W)[:, 1:]
    spans_BVW = (layouts.ends_RW - layouts.starts_RW).reshape(B, V, W)[:, 1:]
    starts_BVW = layouts.starts_RW.reshape(B, V, W)[:, 1:]
    valid = levels_BVW != PAD_LEVEL
    cover_BVT = np.repeat(levels_BVW[valid], spans_BVW[valid]).reshape(B, V - 1, sequence_len)
    rows = np.arange(B)[:, None, None]

    def finer(other: np.ndarray, own: np.ndarray) -> np.ndarray:
        own_levels = levels_BVW[:, own]  # [B, P, W]
        at_start = cover_BVT[rows, other[None, :, None], starts_BVW[:, own]]
        return (own_levels > 0) & valid[:, own] & (at_start < own_levels)

    return finer(ii - 1, jj - 1), finer(jj - 1, ii - 1)


def align_right(x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each row so its last supervised target sits at the end: ``(x, y)`` of the same shape.

    chat SFT pads short conversations on the right (targets -1), which leaves their last
    ``--mc_horizon`` tokens, the tail every variant is scored on, without targets: such rows
    would give GistNet and LensNet no signal. Shifted right, a row's conversation ends at ``T``
    and its padding comes first (copies of the row's first token, targets -1). Rows that are
    already supervised to the end (pretraining, mid-training) and rows with no target at all
    are returned unchanged. One gather; no host sync.
    """
    T = y_BT.shape[1]
    t_T = torch.arange(T, device=y_BT.device)
    supervised_BT = y_BT >= 0
    end_B = torch.where(supervised_BT.any(1), (supervised_BT * (t_T + 1)).amax(1), torch.full_like(y_BT[:, 0], T))
    shift_B = (T - end_B).unsqueeze(1)  # 0 for full rows and for rows without targets
    src_BT = (t_T - shift_B).clamp_min(0)
    before_BT = t_T < shift_B
    x_out = x_BT.gather(1, src_BT)
    y_out = torch.where(before_BT, torch.full_like(y_BT, -1), y_BT.gather(1, src_BT))
    return x_out, y_out
