"""Packing: every variant's inputs, targets and positions by index arrays, one gather each.

The levels of a batch of trees (``build_levels``: ``[B, T, D]``, ``[B, T/K, D]``, ...) are
viewed as one flat table ``[sum_l B * N_l + 1, D]`` whose last row is zeros (padding). A
variant entry ``(b, level, index)`` lives at row ``offset[level] + b * N[level] + index``; the
whole packed input ``[R, W, D]`` is a single ``index_select``. No chain of per-edit cat/slice
ops (the prior art made ~2,000 autograd ops per batch that way).

Targets follow DESIGN 6.3: the target of an entry is the token that follows its span, i.e.
``y[b, end - 1]`` (``y`` is ``x`` shifted by one). Padding gets -1 (ignored by the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..context.positions import entry_positions, rotary_cos_sin, span_sigma
from .layouts import PAD_LEVEL, VariantLayouts


@dataclass(frozen=True)
class PackIndex:
    """Device index tensors for one layout set (reusable for any data of that shape)."""

    table_RW: torch.Tensor
    """Row of each entry in the flat level table (padding: the zero row)."""
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
    sizes = np.array(level_sizes(sequence_len, block_size, num_levels), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(B * sizes)])
    pad_row = int(offsets[-1])
    valid = layouts.valid_RW
    lv = np.where(valid, layouts.levels_RW, 0)
    row_b = (np.arange(B * V, dtype=np.int64) // V)[:, None]
    table = np.where(valid, offsets[lv] + row_b * sizes[lv] + layouts.indices_RW, pad_row)
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

    return PackIndex(dev(table), dev(target), dev(valid), dev(np.where(valid, layouts.levels_RW, PAD_LEVEL)),
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


def pack_inputs(levels: list[torch.Tensor], index: PackIndex) -> torch.Tensor:
    """``inputs[R, W, D]`` from tree levels ``[B, N_l, D]`` with one ``index_select``."""
    D = levels[0].shape[-1]
    dtype = levels[0].dtype
    flat = [lvl.reshape(-1, D).to(dtype) for lvl in levels]
    flat.append(levels[0].new_zeros(1, D))
    table = torch.cat(flat, dim=0)
    R, W = index.table_RW.shape
    return table.index_select(0, index.table_RW.reshape(-1)).view(R, W, D)


def pack_targets(y_BT: torch.Tensor, index: PackIndex) -> torch.Tensor:
    """``targets[R, W]``: the token after each entry's span; -1 on padding."""
    t = y_BT.reshape(-1).index_select(0, index.target_RW.reshape(-1)).view_as(index.target_RW)
    return torch.where(index.valid_RW, t, torch.full_like(t, -1))


def pack_rotary(layouts: VariantLayouts, index: PackIndex, scheme: str, head_dim: int, sequence_len: int,
                gist_sigma_scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row rotary ``(cos, sin)`` ``[R, W, 1, head_dim/2]``; ``None`` when every row would get the
    model's own table (``ordinal`` positions and no gist damping): the base model then runs exactly
    its usual positional path."""
    if scheme == "ordinal" and gist_sigma_scale == 0.0:
        return None
    device = index.valid_RW.device
    starts = torch.from_numpy(layouts.starts_RW).to(device)
    ends = torch.from_numpy(layouts.ends_RW).to(device)
    positions = entry_positions(starts, ends, scheme, sequence_len, mask_BW=index.valid_RW)
    sigma = span_sigma(index.spans_RW, gist_sigma_scale) if gist_sigma_scale > 0 else None
    return rotary_cos_sin(positions, head_dim, dtype=dtype, gaussian_sigma=sigma)


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
