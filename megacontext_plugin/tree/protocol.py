"""The MegaContext tree: one protocol, two backends (``ram`` and ``disk``).

Geometry (K = ``block_size``, a power of two >= 2):

- level 0 (LOD0) holds raw tokens; node ``i`` at level ``k`` covers tokens
  ``[i * K**k, (i + 1) * K**k)``;
- level ``k >= 1`` holds one gist vector per *complete* aligned block of K level ``k-1`` nodes;
  an incomplete tail block stays at the level below;
- with ``N`` tokens appended, level ``k`` has exactly ``N // K**k`` nodes.

What is stored: LOD0 keeps token ids (the embedding of a raw token is the base model's
``wte`` row, looked up on demand through ``embed_fn``); levels >= 1 keep gist vectors made by
``gist_fn``. Both callables are passed to the backend:

- ``embed_fn(token_ids[n]) -> embeddings[n, D]``
- ``gist_fn(children[m, K, D]) -> gists[m, D]``  (GistNet later; tests may pass mean pooling)

Completing blocks makes their gists at once, one batched ``gist_fn`` call per level per append.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

EmbedFn = Callable[[torch.Tensor], torch.Tensor]
"""token_ids[n] (int64) -> embeddings[n, D]."""

GistFn = Callable[[torch.Tensor], torch.Tensor]
"""children[m, K, D] -> gists[m, D]."""


class TreeError(Exception):
    """A tree could not be opened or used: corrupted or foreign files, bad arguments."""


def level_span(level: int, index: int, block_size: int) -> tuple[int, int]:
    """Token span ``[start, end)`` of node ``index`` at ``level``."""
    width = block_size**level
    return index * width, (index + 1) * width


def nodes_at_level(num_tokens: int, level: int, block_size: int) -> int:
    """Number of complete nodes at ``level`` for a history of ``num_tokens`` tokens."""
    return num_tokens // (block_size**level)


def max_tree_level(num_tokens: int, block_size: int) -> int:
    """Highest level with at least one node in a history of ``num_tokens`` tokens."""
    level = 0
    while block_size ** (level + 1) <= num_tokens:
        level += 1
    return level


@runtime_checkable
class MCTree(Protocol):
    """What every tree backend offers. Indices are 0-based node indices within a level."""

    block_size: int
    """K: children per node."""
    dim: int
    """D: embedding width (the base model's ``n_embd``)."""

    @property
    def num_tokens(self) -> int:
        """N: tokens appended so far (committed)."""
        ...

    @property
    def num_levels(self) -> int:
        """Levels that have at least one node (1 + the highest level with a node); 0 if empty."""
        ...

    def level_size(self, level: int) -> int:
        """Complete nodes at ``level`` (``N // K**level``)."""
        ...

    def append(self, token_ids: torch.Tensor, embeddings: torch.Tensor | None = None) -> None:
        """Append ``token_ids[n]`` (and optionally their ``embeddings[n, D]``, else ``embed_fn``).

        Every block completed by this append gets its gist (all levels) before returning.
        """
        ...

    def token_ids(self, start: int, end: int) -> torch.Tensor:
        """LOD0 token ids ``[end - start]`` (int64) for tokens ``[start, end)``."""
        ...

    def embeddings(self, level: int, indices: torch.Tensor) -> torch.Tensor:
        """Vectors ``[n, D]`` of nodes ``indices[n]`` at ``level`` (level 0: token embeddings)."""
        ...

    def level_slice(self, level: int, start: int, end: int) -> torch.Tensor:
        """Vectors ``[end - start, D]`` of nodes ``[start, end)`` at ``level``."""
        ...

    def node_span(self, level: int, index: int) -> tuple[int, int]:
        """Token span ``[start, end)`` of a node."""
        ...

    def parent(self, level: int, index: int) -> tuple[int, int]:
        """``(level + 1, index // K)``; the parent may not exist yet (incomplete block)."""
        ...

    def children(self, level: int, index: int) -> tuple[int, range]:
        """``(level - 1, range(index * K, (index + 1) * K))`` for ``level >= 1``."""
        ...

    def flush(self) -> None:
        """Make every append so far durable according to the backend's policy."""
        ...

    def close(self) -> None:
        """Flush and release files; further use is an error."""
        ...
