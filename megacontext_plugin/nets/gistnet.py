"""GistNet: K child vectors -> one gist vector in the base model's embedding space.

A small bidirectional transformer runs inside each block of K children (token embeddings for
LOD1, LOD1 gists for LOD2, ...). Learned within-block position embeddings make it sensitive to
the order of the children: mean-pooled embeddings keep which tokens occur but not their order,
which is useless for passkeys and most of language.

Output space: the ``wte`` space, *before* nanochat's ``norm(wte(idx))``, so a gist can stand in
for a token embedding and goes through the same norm.

Init: ``gist = mean_k(children) + out_scale ⊙ head(pooled)`` with ``out_scale`` (one learned
value per output channel) initialised to ``init_scale`` (1e-2). At step 0 a gist is therefore
the mean of its children plus a ~1% correction: substitutable from the first step (the base
model reads a bag of its children) while every parameter already gets a gradient.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from .blocks import MLP_RATIO, Block, check_heads, rms_norm

Pooling = Literal["attention", "mean", "first"]
HeadKind = Literal["linear", "mlp"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
HEADS: tuple[str, ...] = get_args(HeadKind)


class AttentionPool(nn.Module):
    """One learned query per head attends over the K positions of a block."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = check_heads(width, heads)
        self.query_C = nn.Parameter(torch.randn(width) * 0.02)
        self.kv = nn.Linear(width, 2 * width, bias=False)

    def forward(self, h_NKC: torch.Tensor) -> torch.Tensor:
        N, K, C = h_NKC.shape
        k_NKHd, v_NKHd = self.kv(h_NKC).view(N, K, 2, self.heads, self.head_dim).unbind(2)
        q_NH1d = self.query_C.to(h_NKC.dtype).view(1, self.heads, 1, self.head_dim).expand(N, -1, -1, -1)
        y_NH1d = nn.functional.scaled_dot_product_attention(q_NH1d, k_NKHd.transpose(1, 2), v_NKHd.transpose(1, 2))
        return y_NH1d.reshape(N, C)

    @staticmethod
    def flops(block: int, width: int) -> int:
        """k/v projection ``4 K C^2``; ``q K^T`` and ``a V`` ``4 K C``."""
        return 4 * block * width**2 + 4 * block * width


def _make_head(kind: str, width: int, dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, dim, bias=False)
    hidden = MLP_RATIO * width
    return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))


class GistNet(nn.Module):
    """Compress blocks of ``block_size`` child vectors ``[..., K, D]`` into gists ``[..., D]``.

    Args:
        dim: D, the base model's embedding width (``n_embd``).
        block_size: K, children per gist.
        layers: transformer layers inside a block.
        heads: attention heads (must divide ``width``).
        pooling: ``attention`` (a learned query attends over the block), ``mean`` (average of the
            contextualised children), ``first`` (a learned summary token is prepended and read out).
        head: ``linear`` or ``mlp`` (``C -> 4C -> D``, GELU) from the pooled vector to D.
        width: C, the internal width (default D). With C < D the children are projected in
            (``D -> C``) and the head projects out, so GistNet stays a few % of base FLOPs.
        init_scale: initial value of the learned per-channel output scale (see module docstring).
    """

    def __init__(
        self,
        dim: int,
        block_size: int,
        layers: int,
        heads: int,
        pooling: str = "attention",
        head: str = "mlp",
        width: int | None = None,
        init_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown GistNet pooling {pooling!r}; allowed: {'|'.join(POOLINGS)}")
        if head not in HEADS:
            raise ValueError(f"unknown GistNet head {head!r}; allowed: {'|'.join(HEADS)}")
        if dim < 1 or block_size < 1 or layers < 1:
            raise ValueError(f"GistNet needs dim, block_size, layers >= 1 (got {dim}, {block_size}, {layers})")
        width = dim if width is None else width
        check_heads(width, heads, "GistNet width")
        self.dim, self.block_size, self.width = dim, block_size, width
        self.layers, self.heads, self.pooling, self.head_kind = layers, heads, pooling, head
        self.proj_in: nn.Module = nn.Identity() if width == dim else nn.Linear(dim, width, bias=False)
        self.pos_KC = nn.Parameter(torch.randn(block_size, width) * 0.5)
        self.summary_C = nn.Parameter(torch.randn(width) * 0.5) if pooling == "first" else None
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.pool = AttentionPool(width, heads) if pooling == "attention" else None
        self.head = _make_head(head, width, dim)
        self.out_scale_D = nn.Parameter(torch.full((dim,), float(init_scale)))

    def forward(self, children_NKD: torch.Tensor) -> torch.Tensor:
        """``children[..., K, D]`` -> ``gists[..., D]`` (any leading dims, one reshape)."""
        *lead, k, d = children_NKD.shape
        if (k, d) != (self.block_size, self.dim):
            raise ValueError(
                f"GistNet expects children [..., {self.block_size}, {self.dim}], got {tuple(children_NKD.shape)}"
            )
        K, D, N = self.block_size, self.dim, 1
        for n in lead:
            N *= n
        x_NKD = children_NKD.reshape(N, K, D)
        if N == 0:
            return children_NKD.new_zeros(*lead, D)
        h_NLC = self.proj_in(rms_norm(x_NKD)) + self.pos_KC.to(x_NKD.dtype)
        if self.summary_C is not None:
            summary_N1C = self.summary_C.to(h_NLC.dtype).view(1, 1, -1).expand(N, 1, -1)
            h_NLC = torch.cat([summary_N1C, h_NLC], dim=1)
        for block in self.blocks:
            h_NLC = block(h_NLC)
        h_NLC = rms_norm(h_NLC)
        if self.pool is not None:
            pooled_NC = self.pool(h_NLC)
        elif self.pooling == "mean":
            pooled_NC = h_NLC.mean(dim=1)
        else:  # first: the summary token
            pooled_NC = h_NLC[:, 0]
        gist_ND = x_NKD.mean(dim=1) + self.out_scale_D.to(x_NKD.dtype) * self.head(pooled_NC)
        return gist_ND.reshape(*lead, D)

    def flops_per_gist(self) -> int:
        """Exact forward matmul FLOPs of one gist (2 per multiply-add).

        With K children, internal width C, model width D, L = K (+1 for ``first`` pooling):
        ``[C != D] 2 K D C + layers (24 L C^2 + 4 L^2 C) + pool + head`` where pool is
        ``4 K C^2 + 4 K C`` for ``attention`` (0 otherwise) and head is ``2 C D`` (``linear``) or
        ``8 C^2 + 8 C D`` (``mlp``).
        """
        K, C, D = self.block_size, self.width, self.dim
        L = K + (1 if self.summary_C is not None else 0)
        total = 0 if C == D else 2 * K * D * C
        total += self.layers * Block.flops(L, None, C)
        if self.pool is not None:
            total += AttentionPool.flops(K, C)
        total += 2 * C * D if self.head_kind == "linear" else 2 * C * MLP_RATIO * C + 2 * MLP_RATIO * C * D
        return total
