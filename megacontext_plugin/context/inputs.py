"""Working contexts -> the base model's inputs: the one path training, evaluation and inference share.

Rows of entries (each row a view of one history: ``level``, node ``index`` and token span
``[start, end)`` per entry, right-padded with ``PAD_LEVEL``) become, in ``model_inputs``:

- ``inputs[R, W, D]``: every entry's vector, a token embedding or a gist, from one ``gather`` of
  an :class:`EntrySource` (in-memory tree levels for training and evaluation, a RAM or disk tree
  for inference); padding is zeros;
- ``value_ids[R, W]``: the token id of raw entries, -1 for gists and padding (nanochat's value
  embeddings are looked up by token id: a gist has none);
- ``targets[R, W]`` (when the caller has them): the token after each entry's span, -1 on padding;
- ``cos_sin``: per-row rotary tables ``[R, W, 1, head_dim/2]`` for the entries' positions
  (``--mc_position_scheme``, never beyond the model's trained range) and Gaussian damping of gists
  (``--mc_rope_gist_sigma``), or None when every row would get the model's own table (ordinal
  positions, no damping): the base model then runs exactly its usual positional path.

Because all three callers build their inputs here, what the base model reads for a working
context cannot differ between training, evaluation and inference.

LensNet's inputs are built here too, in ``lens_utilities``: working contexts and a query become
LensNet's utilities per entry (the entries' vectors from the same ``EntrySource``, their levels and
token spans computed once from ``EntryRows``), so the on-policy layouts and the focus probe of
training, the evaluation's ``mc`` arm and inference's refocus score a working context alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..tree.protocol import MCTree
from .positions import ROPE_BASE, entry_positions, rotary_cos_sin, span_sigma
from .working_context import WorkingContext, WorkingContextError

PAD_LEVEL = -1
"""Level of a padding entry (after a row's last real entry)."""


class EntrySource(Protocol):
    """Where entry vectors and token ids come from. ``seq_n`` says which history each entry reads."""

    def gather(self, seq_n: np.ndarray, levels_n: np.ndarray, indices_n: np.ndarray) -> torch.Tensor:
        """``[n, D]``: the vector of node ``indices_n`` of level ``levels_n`` (0 = token embedding)."""
        ...

    def token_ids(self, seq_n: np.ndarray, positions_n: np.ndarray) -> torch.Tensor:
        """``[n]`` int64 on the vectors' device: the token at each position."""
        ...


@dataclass(frozen=True)
class EntryRows:
    """Rows of entries, int64 arrays ``[R, W]`` (padding: ``PAD_LEVEL``, index 0, span 0..0)."""

    seq_R: np.ndarray
    """The history (tree, sequence of the batch) each row reads."""
    levels_RW: np.ndarray
    indices_RW: np.ndarray
    starts_RW: np.ndarray
    ends_RW: np.ndarray

    @property
    def valid_RW(self) -> np.ndarray:
        return self.levels_RW != PAD_LEVEL

    @property
    def spans_RW(self) -> np.ndarray:
        """Tokens covered by each entry (``end - start``; 0 on padding)."""
        return np.where(self.valid_RW, self.ends_RW - self.starts_RW, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.levels_RW.shape)  # type: ignore[return-value]

    @classmethod
    def of(cls, wcs: list[WorkingContext], seq: list[int] | None = None, width: int | None = None) -> EntryRows:
        """One row per working context (``seq`` default: row r reads history r), padded to ``width``."""
        W = max([len(wc) for wc in wcs] + [width or 0])
        R = len(wcs)
        levels = np.full((R, W), PAD_LEVEL, dtype=np.int64)
        indices, starts, ends = (np.zeros((R, W), dtype=np.int64) for _ in range(3))
        for r, wc in enumerate(wcs):
            n = len(wc)
            levels[r, :n], indices[r, :n], starts[r, :n], ends[r, :n] = wc.levels, wc.indices, wc.starts, wc.ends
        seq_R = np.arange(R, dtype=np.int64) if seq is None else np.asarray(seq, dtype=np.int64)
        return cls(seq_R, levels, indices, starts, ends)

    @classmethod
    def raw(cls, positions_W: np.ndarray) -> EntryRows:
        """One row of raw tokens at ``positions_W`` of history 0 (truncation and full attention)."""
        pos = np.asarray(positions_W, dtype=np.int64)[None]
        return cls(np.zeros(1, dtype=np.int64), np.zeros_like(pos), pos, pos, pos + 1)


class LevelTable:
    """An :class:`EntrySource` over in-memory tree levels ``[B, N_l, D]`` (``build_levels``) and the
    histories' token ids ``[B, T]``: the levels viewed as one flat table whose last row is zeros, so
    a whole batch of rows is one ``index_select`` (gradients reach the gists)."""

    def __init__(self, levels: list[torch.Tensor], ids_BT: torch.Tensor) -> None:
        B, _, D = levels[0].shape
        self.sizes = np.array([int(level.shape[1]) for level in levels], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(B * self.sizes)]).astype(np.int64)
        dtype = levels[0].dtype
        self.table_ND = torch.cat([level.reshape(-1, D).to(dtype) for level in levels]
                                  + [levels[0].new_zeros(1, D)], dim=0)
        self.ids_BT = ids_BT

    def rows(self, seq_n: np.ndarray, levels_n: np.ndarray, indices_n: np.ndarray) -> np.ndarray:
        """Table row of each entry; ``PAD_LEVEL`` entries get the zero row."""
        valid = levels_n != PAD_LEVEL
        lv = np.where(valid, levels_n, 0)
        return np.where(valid, self.offsets[lv] + seq_n * self.sizes[lv] + indices_n, self.offsets[-1])

    def gather(self, seq_n: np.ndarray, levels_n: np.ndarray, indices_n: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.ascontiguousarray(self.rows(seq_n, levels_n, indices_n)))
        return self.table_ND.index_select(0, rows.to(self.table_ND.device))

    def token_ids(self, seq_n: np.ndarray, positions_n: np.ndarray) -> torch.Tensor:
        T = self.ids_BT.shape[1]
        flat = torch.from_numpy(np.ascontiguousarray(seq_n * T + positions_n)).to(self.ids_BT.device)
        return self.ids_BT.reshape(-1).index_select(0, flat)


@dataclass
class ModelInputs:
    """What the base model reads for rows of entries ``[from_entry, W)`` (see the module docstring)."""

    inputs_RWD: torch.Tensor
    value_ids_RW: torch.Tensor
    targets_RW: torch.Tensor | None
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None


def rotary_tables(rows: EntryRows, scheme: str, sigma_scale: float, head_dim: int, sequence_len: int,
                  dtype: torch.dtype, device: torch.device | str = "cpu", rope_base: float = ROPE_BASE
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row rotary ``(cos, sin)`` ``[R, W, 1, head_dim/2]`` of every entry (``rope_base``: the model's,
    ``positions.rope_base``), or None (the model's own table: ``ordinal`` positions and no gist damping)."""
    if scheme == "ordinal" and sigma_scale == 0.0:
        return None
    valid = torch.from_numpy(rows.valid_RW).to(device)
    starts, ends = torch.from_numpy(rows.starts_RW).to(device), torch.from_numpy(rows.ends_RW).to(device)
    positions = entry_positions(starts, ends, scheme, sequence_len, mask_BW=valid)
    sigma = None
    if sigma_scale > 0:
        spans = torch.where(valid, ends - starts, torch.ones_like(starts))
        sigma = span_sigma(spans, sigma_scale)
    return rotary_cos_sin(positions, head_dim, base=rope_base, dtype=dtype, gaussian_sigma=sigma)


def model_inputs(source: EntrySource, rows: EntryRows, *, scheme: str, sigma_scale: float, head_dim: int,
                 sequence_len: int, rotary_dtype: torch.dtype, targets_BT: torch.Tensor | None = None,
                 from_entry: int = 0, rope_base: float = ROPE_BASE) -> ModelInputs:
    """The base model's inputs for entries ``[from_entry, W)`` of every row (positions are those of
    the whole rows: an inference session re-reads only what changed, at the positions it had)."""
    R, W = rows.shape
    cols = slice(from_entry, W)
    valid_Rn = rows.valid_RW[:, cols]
    seq_Rn = np.broadcast_to(rows.seq_R[:, None], valid_Rn.shape)
    levels_Rn, indices_Rn, ends_Rn = rows.levels_RW[:, cols], rows.indices_RW[:, cols], rows.ends_RW[:, cols]
    n = W - from_entry
    inputs = source.gather(seq_Rn.reshape(-1), levels_Rn.reshape(-1), indices_Rn.reshape(-1))
    inputs_RnD = inputs.reshape(R, n, inputs.shape[-1])
    if (~valid_Rn).any():  # a source may return anything for padding: the model sees zeros there
        pad = torch.from_numpy(~valid_Rn).to(inputs_RnD.device)[..., None]
        inputs_RnD = inputs_RnD.masked_fill(pad, 0.0)
    raw_Rn = levels_Rn == 0
    value_ids = np.full((R, n), -1, dtype=np.int64)
    device = inputs_RnD.device
    value_RnT = torch.from_numpy(value_ids).to(device)
    if raw_Rn.any():
        ids = source.token_ids(seq_Rn[raw_Rn], indices_Rn[raw_Rn])
        value_RnT = value_RnT.masked_scatter(torch.from_numpy(raw_Rn).to(device), ids.to(device, torch.int64))
    targets = None
    if targets_BT is not None:
        T = targets_BT.shape[1]
        flat = np.where(valid_Rn, seq_Rn * T + ends_Rn - 1, 0).reshape(-1)
        t = targets_BT.reshape(-1).index_select(0, torch.from_numpy(np.ascontiguousarray(flat)).to(targets_BT.device))
        targets = torch.where(torch.from_numpy(valid_Rn).to(t.device), t.view(R, n), torch.full_like(t.view(R, n), -1))
    cos_sin = rotary_tables(rows, scheme, sigma_scale, head_dim, sequence_len, rotary_dtype, device, rope_base)
    if cos_sin is not None and from_entry:
        cos_sin = (cos_sin[0][:, cols], cos_sin[1][:, cols])
    return ModelInputs(inputs_RnD, value_RnT, targets, cos_sin)


def lens_utilities(lensnet: Callable[..., torch.Tensor], wcs: Sequence[WorkingContext], query_RHD: torch.Tensor, *,
                   source: EntrySource | None = None, entries_RWD: torch.Tensor | None = None,
                   masked: bool = False) -> list[np.ndarray]:
    """LensNet's utilities of every entry of each working context (float32 ``[W_r]`` per context)
    against its query ``[R, H, D]`` (row ``r`` reads history ``r``).

    The entries' vectors come from ``source`` or, when the caller holds them already,
    ``entries_RWD``; they are cast to the query's dtype. Levels and spans are those of
    ``EntryRows.of(wcs)`` (0 on padding). LensNet reads the mask of real entries when a context is
    shorter than another, and always with ``masked`` (a batch of contexts, whatever their lengths:
    its attention then takes one path); one context is read unmasked. Gradients are left to the
    caller's mode (every caller scores under ``no_grad``)."""
    rows = EntryRows.of(list(wcs))
    R, W = rows.shape
    device = query_RHD.device
    if entries_RWD is None:
        if source is None:
            raise ValueError("lens_utilities needs a source of entry vectors or the entries themselves")
        seq = np.repeat(rows.seq_R, W)
        entries_RWD = source.gather(seq, rows.levels_RW.reshape(-1), rows.indices_RW.reshape(-1)).view(R, W, -1)
    valid_RW = rows.valid_RW
    mask = torch.from_numpy(valid_RW).to(device) if masked or not valid_RW.all() else None
    levels = torch.from_numpy(np.where(valid_RW, rows.levels_RW, 0)).to(device)
    spans = torch.from_numpy(rows.spans_RW).to(device)
    u_RW = lensnet(entries_RWD.to(query_RHD.dtype), levels, spans, query_RHD, mask).float().cpu().numpy()
    return [u_RW[r, :len(wc)] for r, wc in enumerate(wcs)]


class TreeSource:
    """An :class:`EntrySource` over MegaContext trees (``MCTree``: RAM or disk), one tree per history.

    Gists come from ``tree.embeddings`` (one call per level present per tree). Raw entries come
    from the tree's own LOD0 vectors, or, with ``wte``, from the model's token embedding of the
    tree's token ids (inference: the table the model was trained with, at the model's dtype).
    Vectors are moved to ``device``/``dtype`` when given.
    """

    def __init__(self, trees: MCTree | Sequence[MCTree], wte: torch.nn.Module | None = None, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        self.trees: list[MCTree] = list(trees) if isinstance(trees, list | tuple) else [trees]
        self.wte, self.device, self.dtype = wte, device, dtype

    def check(self, wcs: Sequence[WorkingContext], seq: Sequence[int] | None = None) -> None:
        """``WorkingContextError`` unless each working context fits its tree (block size, tokens)."""
        seq = range(len(wcs)) if seq is None else seq
        if len(self.trees) != 1 and len(self.trees) <= max(seq, default=0):
            raise WorkingContextError(f"got {len(self.trees)} trees for {len(wcs)} working contexts: "
                                      "pass one tree or one per row")
        for wc, s in zip(wcs, seq, strict=True):
            tree = self._tree(s)
            if tree.block_size != wc.block_size:
                raise WorkingContextError(
                    f"tree block_size {tree.block_size} does not match the working context's {wc.block_size}")
            if tree.num_tokens < wc.num_tokens:
                raise WorkingContextError(
                    f"the working context covers {wc.num_tokens} tokens but the tree holds only {tree.num_tokens}")

    def _tree(self, s: int) -> MCTree:
        return self.trees[0] if len(self.trees) == 1 else self.trees[s]

    def _place(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.to(device=self.device or vectors.device, dtype=self.dtype or vectors.dtype)

    def gather(self, seq_n: np.ndarray, levels_n: np.ndarray, indices_n: np.ndarray) -> torch.Tensor:
        n = int(levels_n.shape[0])
        tree_n = np.zeros(n, dtype=np.int64) if len(self.trees) == 1 else np.asarray(seq_n, dtype=np.int64)
        parts: list[tuple[np.ndarray, torch.Tensor]] = []
        for t in np.unique(tree_n).tolist():
            tree = self.trees[t]
            for level in np.unique(levels_n[(tree_n == t) & (levels_n != PAD_LEVEL)]).tolist():
                sel = np.flatnonzero((tree_n == t) & (levels_n == level))
                idx = np.ascontiguousarray(indices_n[sel])
                if level == 0 and self.wte is not None:
                    vectors = self.wte(self.token_ids(np.full(sel.size, t), idx))
                else:
                    vectors = tree.embeddings(level, torch.from_numpy(idx))
                    if vectors.shape != (sel.size, tree.dim):
                        raise WorkingContextError(f"tree.embeddings(level={level}) returned shape "
                                                  f"{tuple(vectors.shape)}, expected ({sel.size}, {tree.dim})")
                parts.append((sel, self._place(vectors)))
        if not parts:  # still ask a tree, so that dtype and device are the tree's
            empty = self._place(self.trees[0].embeddings(0, torch.zeros(0, dtype=torch.int64)))
            return empty.new_zeros(n, self.trees[0].dim)
        dtype = parts[0][1].dtype
        for _, vectors in parts[1:]:
            dtype = torch.promote_types(dtype, vectors.dtype)
        device = parts[0][1].device
        order = torch.from_numpy(np.concatenate([sel for sel, _ in parts])).to(device)
        src = torch.cat([vectors.to(dtype) for _, vectors in parts]) if len(parts) > 1 else parts[0][1]
        # index_copy keeps autograd into every tree's vectors; padding rows stay zeros
        return torch.zeros(n, src.shape[1], dtype=dtype, device=device).index_copy(0, order, src)

    def token_ids(self, seq_n: np.ndarray, positions_n: np.ndarray) -> torch.Tensor:
        """Token ids: one tree read per contiguous run of positions (raw entries come in runs), or one
        read when they are dense."""
        out = np.zeros(len(positions_n), dtype=np.int64)
        tree_n = np.zeros(len(positions_n), dtype=np.int64) if len(self.trees) == 1 else np.asarray(seq_n)
        for t in np.unique(tree_n).tolist():
            sel = np.flatnonzero(tree_n == t)
            order = np.argsort(positions_n[sel], kind="stable")
            pos = np.asarray(positions_n[sel][order], dtype=np.int64)
            out[sel[order]] = _read_runs(self.trees[t], pos)
        device = self.device
        if device is None and self.wte is not None:
            device = next(self.wte.parameters()).device
        return torch.from_numpy(out).to(device or "cpu")


def _read_runs(tree: MCTree, pos_n: np.ndarray) -> np.ndarray:
    """Ids at ascending positions ``pos_n`` of ``tree``."""
    if pos_n.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(pos_n[0]), int(pos_n[-1]) + 1
    if hi - lo <= 2 * pos_n.size + 4096:
        return tree.token_ids(lo, hi).numpy().astype(np.int64)[pos_n - lo]
    breaks = np.flatnonzero(np.diff(pos_n) > 1) + 1
    starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [pos_n.size]])
    runs = [tree.token_ids(int(pos_n[a]), int(pos_n[b - 1]) + 1).numpy().astype(np.int64)[pos_n[a:b] - pos_n[a]]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    return np.concatenate(runs)
