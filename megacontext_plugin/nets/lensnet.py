"""LensNet: a signed utility in [-1, 1] for every working-context entry.

Positive = worth expanding into its children, negative = cheap to collapse into its parent.
LensNet must see the recent tokens that the working context serves: a causal scan over the
entries would leave old entries (the ones worth editing) blind to the tail they are scored for.
Two non-causal layouts, ``context``:

- ``bidirectional``: self-attention over ``[entries; tail]`` in both directions (every entry
  sees every other entry and the tail). Cost grows as ``(W + R)^2``.
- ``cross``: each entry attends to the tail only (no entry-entry attention). Cost ``W R``.

Per-entry inputs: the entry's vector (token embedding or gist, RMS-normalised then projected),
a learned embedding of its level (LOD), and four scalar features: ``log2(span) / 16``,
``log2(1 + tokens after the entry) / 16`` (recency: the tokens covered by the entries after it,
so entries must be in order and tile the history, the WC invariant), and the mean and max
cosine of the entry with the tail tokens (relevance to what it serves: a direct input, so the
preference loss does not have to discover it through attention alone). The tail is the last R
tokens of the history (normally also the WC's last R raw entries): level 0, span 1, recency
``R - 1 - r``, plus a learned "tail" type vector.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from .blocks import Block, check_heads, rms_norm

LensContext = Literal["bidirectional", "cross"]
CONTEXTS: tuple[str, ...] = get_args(LensContext)
FEATURE_SCALE = 1.0 / 16.0
"""Multiplies the log2 features so spans and distances up to 2^16 tokens map into [0, 1]."""
NUM_FEATURES = 4


def _features(spans_BW: torch.Tensor, after_BW: torch.Tensor, sim_BWR: torch.Tensor) -> torch.Tensor:
    """``[B, W, 4]``: log2 span, log2 recency (scaled), mean and max cosine with the tail tokens."""
    spans = spans_BW.to(torch.float32).clamp_min(1.0)
    after = after_BW.to(torch.float32).clamp_min(0.0)
    sim = sim_BWR.to(torch.float32)
    return torch.stack(
        [spans.log2() * FEATURE_SCALE, (1.0 + after).log2() * FEATURE_SCALE, sim.mean(-1), sim.amax(-1)], dim=-1
    )


def _cosine(a_BXD: torch.Tensor, b_BRD: torch.Tensor) -> torch.Tensor:
    """``[B, X, R]`` cosine similarities (rows RMS-normalised, so the dot product / D is the cosine)."""
    return torch.einsum("bxd,brd->bxr", rms_norm(a_BXD), rms_norm(b_BRD)) / a_BXD.shape[-1]


class LensNet(nn.Module):
    """Score entries ``[B, W, D]`` against the recent tail ``[B, R, D]``; see the module docstring.

    Args:
        dim: D, the base model's embedding width.
        hidden: H, LensNet's width (``--lensnet_dim``).
        layers: attention + MLP blocks.
        heads: attention heads (must divide ``hidden``).
        context: ``bidirectional`` or ``cross``.
        max_level: largest entry level accepted (levels are embedded, ``0..max_level``).
    """

    def __init__(
        self, dim: int, hidden: int, layers: int, heads: int, context: str = "bidirectional", max_level: int = 16
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"unknown LensNet context {context!r}; allowed: {'|'.join(CONTEXTS)}")
        if dim < 1 or hidden < 1 or layers < 1 or max_level < 0:
            raise ValueError(f"LensNet needs dim, hidden, layers >= 1 (got {dim}, {hidden}, {layers})")
        check_heads(hidden, heads, "LensNet width")
        self.dim, self.hidden, self.layers, self.heads, self.context = dim, hidden, layers, heads, context
        self.max_level = max_level
        self.proj_in = nn.Linear(dim, hidden, bias=False)
        self.level_emb = nn.Embedding(max_level + 1, hidden)
        nn.init.normal_(self.level_emb.weight, std=0.5)
        self.features = nn.Linear(NUM_FEATURES, hidden)
        self.tail_type_H = nn.Parameter(torch.randn(hidden) * 0.5)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.score = nn.Linear(hidden, 1)
        nn.init.normal_(self.score.weight, std=0.02 / hidden**0.5)  # scores ~ +-0.02 at init: no edits
        nn.init.zeros_(self.score.bias)  # before LensNet has learned anything (thresholds default to 0.1)

    def forward(
        self,
        entries_BWD: torch.Tensor,
        levels_BW: torch.Tensor,
        spans_BW: torch.Tensor,
        tail_BRD: torch.Tensor,
        mask_BW: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``scores[B, W]`` in [-1, 1]; padded entries (``mask`` False) score 0 and affect nothing.

        ``levels`` int, ``spans`` = tokens covered by each entry (``ends - starts``),
        ``mask`` True for real entries (None: all real).
        """
        B, W, D = entries_BWD.shape
        R = tail_BRD.shape[1]
        if (D, tail_BRD.shape[0], tail_BRD.shape[2]) != (self.dim, B, self.dim):
            raise ValueError(
                f"LensNet(dim={self.dim}) got entries {tuple(entries_BWD.shape)} and tail {tuple(tail_BRD.shape)}"
            )
        if levels_BW.shape != (B, W) or spans_BW.shape != (B, W) or (mask_BW is not None and mask_BW.shape != (B, W)):
            raise ValueError(f"levels, spans and mask must be [B, W] = [{B}, {W}]")
        if R < 1:
            raise ValueError("LensNet needs at least one tail token: it scores entries for the tokens they serve")
        dtype, device = entries_BWD.dtype, entries_BWD.device
        real_BW = torch.ones(B, W, dtype=torch.bool, device=device) if mask_BW is None else mask_BW.bool()

        spans_BW = torch.where(real_BW, spans_BW, torch.zeros_like(spans_BW))
        after_BW = spans_BW.sum(dim=1, keepdim=True) - spans_BW.cumsum(dim=1)  # tokens after each entry
        levels_BW = torch.where(real_BW, levels_BW, torch.zeros_like(levels_BW))
        x_BWH = (
            self.proj_in(rms_norm(entries_BWD))
            + self.level_emb(levels_BW).to(dtype)
            + self.features(_features(spans_BW, after_BW, _cosine(entries_BWD, tail_BRD)).to(dtype))
        )
        ones_BR = torch.ones(B, R, device=device)
        after_BR = torch.arange(R - 1, -1, -1, device=device).expand(B, R)
        tail_features_BRF = _features(ones_BR, after_BR, _cosine(tail_BRD, tail_BRD))
        tail_extra_BRH = self.features(tail_features_BRF.to(dtype)) + (
            self.level_emb.weight[0] + self.tail_type_H
        ).to(dtype)
        t_BRH = self.proj_in(rms_norm(tail_BRD)) + tail_extra_BRH

        if self.context == "bidirectional":
            h_BLH = torch.cat([x_BWH, t_BRH], dim=1)
            key_mask = None if mask_BW is None else torch.cat([real_BW, real_BW.new_ones(B, R)], dim=1)
            for block in self.blocks:
                h_BLH = block(h_BLH, key_mask_BS=key_mask)
            x_BWH = h_BLH[:, :W]
        else:
            t_BRH = rms_norm(t_BRH)
            for block in self.blocks:
                x_BWH = block(x_BWH, context_BSC=t_BRH)
        scores_BW = torch.tanh(self.score(rms_norm(x_BWH)).squeeze(-1))
        return torch.where(real_BW, scores_BW, torch.zeros_like(scores_BW))

    def flops(self, W: int, R: int, batch: int = 1) -> int:
        """Exact forward matmul FLOPs of ``batch`` rows of W entries and R tail tokens (2 per multiply-add).

        Per row: inputs ``2 (W+R) D H``, features ``2 (W+R) 4 H``, tail cosines ``2 (W+R) R D``;
        score head ``2 W H``; per layer, ``bidirectional`` (L = W + R) ``24 L H^2 + 4 L^2 H``,
        ``cross`` ``20 W H^2 + 4 R H^2 + 4 W R H``.
        """
        D, H = self.dim, self.hidden
        row = 2 * (W + R) * D * H + 2 * (W + R) * NUM_FEATURES * H + 2 * W * H + 2 * (W + R) * R * D
        if self.context == "bidirectional":
            row += self.layers * Block.flops(W + R, None, H)
        else:
            row += self.layers * Block.flops(W, R, H)
        return batch * row
