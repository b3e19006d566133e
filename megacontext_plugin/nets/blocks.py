"""Transformer pieces shared by GistNet and LensNet, with their exact matmul FLOP counts.

Everything here is non-causal: GistNet attends both ways inside a block, LensNet both ways over
the working context (or from entries to the recent tail). Norms are parameter-free RMSNorm, as
in nanochat. FLOPs count 2 per multiply-add of every matmul in the forward pass (linear layers,
``Q K^T``, ``A V``); element-wise work (norms, softmax, activations, residual adds) is not
counted, the convention of nanochat's ``estimate_flops`` and of ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MLP_RATIO = 4
"""Hidden width of every MLP, as a multiple of its input width."""


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def check_heads(width: int, heads: int, what: str = "width") -> int:
    """``width // heads``; ValueError unless ``heads`` divides ``width``."""
    if heads < 1 or width % heads:
        raise ValueError(f"{heads} attention heads do not divide the {what} {width}")
    return width // heads


class Attention(nn.Module):
    """Multi-head attention without a causal mask.

    Queries come from ``x_BLC``; keys and values from ``context_BSC`` (cross-attention) or from
    ``x_BLC`` itself (self-attention). ``key_mask_BS`` (True = may be attended to) hides padding;
    in self-attention every position also attends to itself so that no row is empty.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = check_heads(width, heads)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(
        self,
        x_BLC: torch.Tensor,
        context_BSC: torch.Tensor | None = None,
        key_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, L, C = x_BLC.shape
        src_BSC = x_BLC if context_BSC is None else context_BSC
        S = src_BSC.shape[1]
        q_BHLd = self.q(x_BLC).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k_BSHd, v_BSHd = self.kv(src_BSC).view(B, S, 2, self.heads, self.head_dim).unbind(2)
        attn_mask = None
        if key_mask_BS is not None:
            allowed_BLS = key_mask_BS[:, None, :].expand(B, L, S)
            if context_BSC is None:  # self-attention: a padded query still sees itself (no empty row)
                allowed_BLS = allowed_BLS | torch.eye(L, dtype=torch.bool, device=x_BLC.device)
            attn_mask = allowed_BLS[:, None]  # [B, 1, L, S], broadcast over heads
        y_BHLd = F.scaled_dot_product_attention(
            q_BHLd, k_BSHd.transpose(1, 2), v_BSHd.transpose(1, 2), attn_mask=attn_mask
        )
        return self.out(y_BHLd.transpose(1, 2).reshape(B, L, C))

    @staticmethod
    def flops(queries: int, keys: int, width: int) -> int:
        """q and out projections ``4 L C^2``, k/v ``4 S C^2``, ``QK^T`` and ``AV`` ``4 L S C``."""
        return 4 * queries * width**2 + 4 * keys * width**2 + 4 * queries * keys * width


class MLP(nn.Module):
    """``C -> 4C -> C`` with GELU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.down = nn.Linear(MLP_RATIO * width, width, bias=False)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x_BLC)))

    @staticmethod
    def flops(tokens: int, width: int) -> int:
        return 2 * 2 * tokens * width * MLP_RATIO * width


class Block(nn.Module):
    """Pre-norm residual block: attention (self, or cross to a pre-normalised context), then MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.mlp = MLP(width)

    def forward(
        self,
        x_BLC: torch.Tensor,
        context_BSC: torch.Tensor | None = None,
        key_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_BLC = x_BLC + self.attn(rms_norm(x_BLC), context_BSC, key_mask_BS)
        return x_BLC + self.mlp(rms_norm(x_BLC))

    @staticmethod
    def flops(queries: int, keys: int | None, width: int) -> int:
        """Self-attention block (``keys=None``): ``24 L C^2 + 4 L^2 C``."""
        return Attention.flops(queries, queries if keys is None else keys, width) + MLP.flops(queries, width)
