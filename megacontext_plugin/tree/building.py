"""Logic shared by both tree backends: argument checks, the gist cascade, ``build_levels``
(the batched builder used by training) and ``TreeBase`` (the protocol's queries, written once
against a few storage hooks that ``RamTree`` and ``DiskTree`` implement).

Exactness contract: the incremental tree (any chunking of appends, any backend, before or
after a reopen) and ``build_levels(..., dtype=tree.dtype)`` give bit-identical gists as long
as ``gist_fn`` is deterministic and batch-invariant (a block's gist does not depend on which
other blocks share the call), as mean pooling is. Gists are cast to the storage dtype
*before* they feed the level above, so a level is always built from what is stored.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .protocol import EmbedFn, GistFn, TreeError, level_span, nodes_at_level

GIST_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Supported gist storage dtypes by name (the name is what the disk manifest records)."""

MAX_TOKEN_ID = 2**31 - 1
"""Token ids are stored as int32."""


def mean_pool_gist(children_MKD: torch.Tensor) -> torch.Tensor:
    """The simplest ``gist_fn``: the mean of the K children ``[m, K, D] -> [m, D]``.

    Deterministic and batch-invariant; a baseline and test double for GistNet (it keeps which
    tokens occur in a block but not their order).
    """
    return children_MKD.mean(dim=1)


def check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TreeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 2 or block_size & (block_size - 1):
        raise TreeError(f"block_size must be a power of two >= 2, got {block_size}")
    return block_size


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TreeError(f"dim must be a positive int, got {dim!r}")
    return dim


def dtype_name(dtype: torch.dtype) -> str:
    """Name of a supported gist storage dtype; ``TreeError`` for any other."""
    for name, candidate in GIST_DTYPES.items():
        if dtype == candidate:
            return name
    raise TreeError(f"unsupported gist dtype {dtype}: expected one of {', '.join(GIST_DTYPES)}")


def _as_int(name: str, value: int) -> int:
    """``value`` as an int: Python and numpy ints and 0-d integer tensors pass, bools do not."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TreeError(f"{name} must be an int, got {type(value).__name__}")


def _check_vectors(gists: torch.Tensor, rows: int, dim: int, what: str) -> torch.Tensor:
    if not isinstance(gists, torch.Tensor) or tuple(gists.shape) != (rows, dim):
        shape = tuple(gists.shape) if isinstance(gists, torch.Tensor) else type(gists).__name__
        raise TreeError(f"{what} returned {shape}, expected shape ({rows}, {dim})")
    if not gists.is_floating_point():
        raise TreeError(f"{what} returned dtype {gists.dtype}, expected a floating dtype")
    return gists


def build_levels(
    embeddings_BTD: torch.Tensor,
    block_size: int,
    gist_fn: GistFn,
    *,
    max_level: int | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """All levels of a batch of trees at once, differentiably (the training path).

    ``embeddings_BTD`` are LOD0 embeddings ``[B, T, D]``. Returns
    ``[lod0[B, T, D], lod1[B, T//K, D], lod2[B, T//K**2, D], ...]``, stopping before the first
    level with no node (or after ``max_level``). Level ``k`` is one ``gist_fn`` call on
    ``[B * T//K**k, K, D]``. With ``dtype`` each gist level is cast to it before feeding the
    next, exactly as a tree storing gists in ``dtype`` does; the result then equals the
    incremental tree's gists bit for bit (see the module docstring).
    """
    k = check_block_size(block_size)
    if not isinstance(embeddings_BTD, torch.Tensor) or embeddings_BTD.dim() != 3:
        raise TreeError("build_levels expects embeddings of shape [B, T, D]")
    if max_level is not None and max_level < 0:
        raise TreeError(f"max_level must be >= 0, got {max_level}")
    batch, _, dim = embeddings_BTD.shape
    levels = [embeddings_BTD]
    prev_BND = embeddings_BTD
    while max_level is None or len(levels) <= max_level:
        nodes = prev_BND.shape[1] // k
        if nodes == 0:
            break
        children_MKD = prev_BND[:, : nodes * k].reshape(batch * nodes, k, dim)
        gists_MD = _check_vectors(gist_fn(children_MKD), batch * nodes, dim, "gist_fn")
        gists_BND = gists_MD.reshape(batch, nodes, dim)
        if dtype is not None:
            gists_BND = gists_BND.to(dtype)
        levels.append(gists_BND)
        prev_BND = gists_BND
    return levels


def cascade(
    tails: Sequence[torch.Tensor],
    lod0_ND: torch.Tensor,
    block_size: int,
    gist_fn: GistFn,
    dtype: torch.dtype,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gists completed by appending LOD0 embeddings ``lod0_ND[n, D]`` to a tree.

    ``tails[k]`` is the *open tail* of level ``k``: its ``[t_k, D]`` last nodes (``t_k < K``)
    that no level ``k+1`` node covers yet (level 0: token embeddings, others: stored gists).
    Returns ``(new_gists, new_tails)``: ``new_gists[k - 1]`` holds the new level-``k`` nodes
    ``[m_k, D]`` in ``dtype`` (one ``gist_fn`` call per level, stopping at the first level
    that gains no node) and ``new_tails`` the open tails afterwards. Pure: nothing is mutated.
    """
    k = block_size
    dim = lod0_ND.shape[1]
    new_gists: list[torch.Tensor] = []
    new_tails: list[torch.Tensor] = []
    nodes_ND = lod0_ND
    level = 0
    while True:
        if level < len(tails) and tails[level].shape[0]:
            nodes_ND = torch.cat([tails[level].to(nodes_ND.device), nodes_ND])
        complete = nodes_ND.shape[0] // k
        new_tails.append(nodes_ND[complete * k :].clone())
        if complete == 0:
            break
        children_MKD = nodes_ND[: complete * k].reshape(complete, k, dim).contiguous()
        gists_MD = _check_vectors(gist_fn(children_MKD), complete, dim, "gist_fn").to(dtype)
        new_gists.append(gists_MD)
        nodes_ND = gists_MD
        level += 1
    new_tails.extend(tails[level + 1 :])
    return new_gists, new_tails


class TreeBase(ABC):
    """The ``MCTree`` protocol written once; a backend implements the storage hooks below.

    Vectors returned by queries are CPU tensors: gists in the storage ``dtype``, LOD0
    embeddings as ``embed_fn`` makes them. ``append`` runs under ``torch.no_grad``.
    """

    block_size: int
    dim: int
    dtype: torch.dtype
    gist_version: int

    def __init__(
        self,
        *,
        block_size: int,
        dim: int,
        embed_fn: EmbedFn,
        gist_fn: GistFn,
        dtype: torch.dtype,
        gist_version: int,
    ) -> None:
        self.block_size = check_block_size(block_size)
        self.dim = check_dim(dim)
        dtype_name(dtype)
        self.dtype = dtype
        if isinstance(gist_version, bool) or not isinstance(gist_version, int) or gist_version < 0:
            raise TreeError(f"gist_version must be an int >= 0, got {gist_version!r}")
        self.gist_version = gist_version
        self._embed_fn = embed_fn
        self._gist_fn = gist_fn
        self._num_tokens = 0
        self._tails: list[torch.Tensor] = []
        self._closed = False

    # ---- storage hooks -------------------------------------------------------------------
    @abstractmethod
    def _store(self, ids_N: torch.Tensor, new_gists: list[torch.Tensor], num_tokens: int) -> None:
        """Persist new ids ``[n]`` (int32) and ``new_gists[k-1]`` (level k) and commit
        ``num_tokens`` (the count after this append). All or nothing."""

    @abstractmethod
    def _read_ids(self, start: int, end: int) -> torch.Tensor:
        """Ids ``[end - start]`` as int64; the range is already checked."""

    @abstractmethod
    def _gather_ids(self, indices_N: torch.Tensor) -> torch.Tensor:
        """Ids ``[n]`` as int64 at checked int64 indices."""

    @abstractmethod
    def _read_gists(self, level: int, start: int, end: int) -> torch.Tensor:
        """Gists ``[end - start, D]`` of level >= 1, a copy; the range is already checked."""

    @abstractmethod
    def _gather_gists(self, level: int, indices_N: torch.Tensor) -> torch.Tensor:
        """Gists ``[n, D]`` of level >= 1 at checked int64 indices, a copy."""

    def _sync(self) -> None:  # noqa: B027 (optional hook: only the disk backend syncs)
        """Make the committed state durable (disk backend, per its fsync policy)."""

    def _release(self) -> None:  # noqa: B027 (optional hook)
        """Release files and buffers."""

    # ---- helpers -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise TreeError(f"{type(self).__name__} is closed")

    def _embed(self, ids_N: torch.Tensor) -> torch.Tensor:
        return _check_vectors(self._embed_fn(ids_N), ids_N.shape[0], self.dim, "embed_fn")

    def _restore_tails(self) -> None:
        """Rebuild the open tails after a reopen: LOD0 via ``embed_fn``, gists from storage."""
        k = self.block_size
        tails = []
        for level in range(self.num_levels):
            size = self.level_size(level)
            start = size // k * k
            if level == 0:
                tails.append(self._embed(self._read_ids(start, size)))
            else:
                tails.append(self._read_gists(level, start, size))
        self._tails = tails

    def _check_level(self, level: int) -> int:
        level = _as_int("level", level)
        if level < 0:
            raise TreeError(f"level must be >= 0, got {level}")
        return level

    def _check_range(self, level: int, start: int, end: int) -> tuple[int, int, int]:
        level, start, end = self._check_level(level), _as_int("start", start), _as_int("end", end)
        size = nodes_at_level(self._num_tokens, level, self.block_size)
        if not 0 <= start <= end <= size:
            raise TreeError(
                f"nodes [{start}, {end}) out of range at level {level}, which has {size} nodes "
                f"(N={self._num_tokens} tokens, K={self.block_size})"
            )
        return level, start, end

    def _check_node(self, level: int, index: int) -> tuple[int, int]:
        index = _as_int("index", index)
        level, _, _ = self._check_range(level, index, index + 1)
        return level, index

    def _check_indices(self, level: int, indices: torch.Tensor) -> tuple[int, torch.Tensor]:
        level = self._check_level(level)
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise TreeError("indices must be a 1-D integer tensor")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TreeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        indices = indices.to("cpu", torch.int64)
        size = self.level_size(level)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise TreeError(
                f"indices [{int(indices.min())}, {int(indices.max())}] out of range at level {level}, "
                f"which has {size} nodes (N={self._num_tokens} tokens, K={self.block_size})"
            )
        return level, indices

    # ---- the protocol --------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        self._check_open()
        return self._num_tokens

    @property
    def num_levels(self) -> int:
        self._check_open()
        levels = 0
        while nodes_at_level(self._num_tokens, levels, self.block_size):
            levels += 1
        return levels

    def level_size(self, level: int) -> int:
        self._check_open()
        return nodes_at_level(self._num_tokens, self._check_level(level), self.block_size)

    def append(self, token_ids: torch.Tensor, embeddings: torch.Tensor | None = None) -> None:
        self._check_open()
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            raise TreeError("token_ids must be a 1-D integer tensor")
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise TreeError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
        n = token_ids.shape[0]
        if embeddings is not None:
            if not isinstance(embeddings, torch.Tensor) or tuple(embeddings.shape) != (n, self.dim):
                shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else embeddings
                raise TreeError(f"embeddings must have shape ({n}, {self.dim}), got {shape}")
            if not embeddings.is_floating_point():
                raise TreeError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
        if n == 0:
            return
        ids_N = token_ids.to("cpu", torch.int64)
        low, high = int(ids_N.min()), int(ids_N.max())
        if low < 0 or high > MAX_TOKEN_ID:
            raise TreeError(f"token ids must lie in [0, {MAX_TOKEN_ID}], got [{low}, {high}]")
        with torch.no_grad():
            lod0_ND = self._embed(ids_N) if embeddings is None else embeddings.detach()
            new_gists, new_tails = cascade(self._tails, lod0_ND, self.block_size, self._gist_fn, self.dtype)
            stored = [g.to("cpu") for g in new_gists]
            self._store(ids_N.to(torch.int32), stored, self._num_tokens + n)
        self._num_tokens += n
        self._tails = new_tails

    def token_ids(self, start: int, end: int) -> torch.Tensor:
        self._check_open()
        _, start, end = self._check_range(0, start, end)
        return self._read_ids(start, end)

    def embeddings(self, level: int, indices: torch.Tensor) -> torch.Tensor:
        self._check_open()
        level, indices_N = self._check_indices(level, indices)
        if level == 0:
            return self._embed(self._gather_ids(indices_N))
        if indices_N.numel() == 0:
            return torch.empty((0, self.dim), dtype=self.dtype)
        return self._gather_gists(level, indices_N)

    def level_slice(self, level: int, start: int, end: int) -> torch.Tensor:
        self._check_open()
        level, start, end = self._check_range(level, start, end)
        if level == 0:
            return self._embed(self._read_ids(start, end))
        if start == end:
            return torch.empty((0, self.dim), dtype=self.dtype)
        return self._read_gists(level, start, end)

    def node_span(self, level: int, index: int) -> tuple[int, int]:
        self._check_open()
        level, index = self._check_node(level, index)
        return level_span(level, index, self.block_size)

    def parent(self, level: int, index: int) -> tuple[int, int]:
        self._check_open()
        level, index = self._check_node(level, index)
        return level + 1, index // self.block_size

    def children(self, level: int, index: int) -> tuple[int, range]:
        self._check_open()
        level, index = self._check_node(level, index)
        if level == 0:
            raise TreeError("level-0 nodes (tokens) have no children")
        k = self.block_size
        return level - 1, range(index * k, (index + 1) * k)

    def flush(self) -> None:
        self._check_open()
        self._sync()

    def close(self) -> None:
        """Flush and release; closing twice is harmless, any other use afterwards is an error."""
        if self._closed:
            return
        self._sync()
        self._release()
        self._closed = True
        self._tails = []

    def __enter__(self) -> TreeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"N={self._num_tokens}"
        return (
            f"{type(self).__name__}({state}, K={self.block_size}, D={self.dim}, "
            f"dtype={dtype_name(self.dtype)}, gist_version={self.gist_version})"
        )
