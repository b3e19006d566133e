"""The ``ram`` tree backend: every level in a CPU tensor grown geometrically.

LOD0 keeps token ids (int32); levels >= 1 keep gists ``[n_k, D]`` in the storage dtype.
Buffers double when full, so an append costs amortised O(appended rows).
"""

from __future__ import annotations

import torch

from .building import TreeBase
from .protocol import EmbedFn, GistFn


class GrowableRows:
    """Rows ``[n, *row_shape]`` in a buffer that doubles when full (amortised O(1) per row)."""

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype, capacity: int = 64) -> None:
        self._buffer = torch.empty((capacity, *row_shape), dtype=dtype)
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def extend(self, rows: torch.Tensor) -> None:
        """Append ``rows[m, *row_shape]``."""
        needed = self._rows + rows.shape[0]
        if needed > self._buffer.shape[0]:
            capacity = max(needed, 2 * self._buffer.shape[0])
            grown = torch.empty((capacity, *self._buffer.shape[1:]), dtype=self._buffer.dtype)
            grown[: self._rows] = self._buffer[: self._rows]
            self._buffer = grown
        self._buffer[self._rows : needed] = rows
        self._rows = needed

    def view(self) -> torch.Tensor:
        """The filled rows ``[n, *row_shape]`` (a view: callers must copy before handing out)."""
        return self._buffer[: self._rows]


class RamTree(TreeBase):
    """MegaContext tree held in RAM. Nothing survives the process; see ``DiskTree`` for that.

    ``embed_fn(token_ids[n]) -> [n, D]`` gives LOD0 embeddings (the base model's ``wte`` rows);
    ``gist_fn(children[m, K, D]) -> [m, D]`` makes gists, stored in ``dtype``.
    """

    def __init__(
        self,
        block_size: int,
        dim: int,
        embed_fn: EmbedFn,
        gist_fn: GistFn,
        *,
        dtype: torch.dtype = torch.float32,
        gist_version: int = 0,
    ) -> None:
        super().__init__(
            block_size=block_size,
            dim=dim,
            embed_fn=embed_fn,
            gist_fn=gist_fn,
            dtype=dtype,
            gist_version=gist_version,
        )
        self._ids = GrowableRows((), torch.int32)
        self._levels: list[GrowableRows] = []  # _levels[k - 1] holds level k >= 1

    def _store(self, ids_N: torch.Tensor, new_gists: list[torch.Tensor], num_tokens: int) -> None:
        self._ids.extend(ids_N)
        for level, gists_MD in enumerate(new_gists, start=1):
            if level > len(self._levels):
                self._levels.append(GrowableRows((self.dim,), self.dtype))
            self._levels[level - 1].extend(gists_MD)

    def _read_ids(self, start: int, end: int) -> torch.Tensor:
        return self._ids.view()[start:end].to(torch.int64)

    def _gather_ids(self, indices_N: torch.Tensor) -> torch.Tensor:
        return self._ids.view()[indices_N].to(torch.int64)

    def _read_gists(self, level: int, start: int, end: int) -> torch.Tensor:
        return self._levels[level - 1].view()[start:end].clone()

    def _gather_gists(self, level: int, indices_N: torch.Tensor) -> torch.Tensor:
        return self._levels[level - 1].view()[indices_N]

    def _release(self) -> None:
        self._ids = GrowableRows((), torch.int32, capacity=0)
        self._levels = []
