"""A small nanochat-shaped GPT for CPU tests, benchmarks and the tiny quality models.

Written here (not imported from nanochat) so the plugin's tests run without upstream. It has
the features that matter to MegaContext: token embedding followed by an RMS norm, rotary
positions with QK norm, causal attention, relu² MLP, untied lm_head with a logit softcap, and
the two inputs the patched nanochat ``GPT.forward`` takes from the hooks: input embeddings
instead of ids, and per-row rotary tables. ``forward_embeds`` (with nanochat's KV-cache duck
type) is the patched host's inference entry point, used by the inference tests and benchmark.
Training's recipe (``training.tiny_recipe``) trains it and the evaluation loads it
(``nets.tiny_checkpoint``), so it sits with the other networks, below both rooms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..context.positions import rotary_cos_sin


@dataclass(frozen=True)
class TinyGPTConfig:
    vocab_size: int = 256
    sequence_len: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def _rotate(x_BTHC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x_BTHC.shape[-1] // 2
    x1, x2 = x_BTHC[..., :half], x_BTHC[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class _Block(nn.Module):
    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: Any = None,
                layer: int = 0) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(_norm(x_BTD)).view(B, T, 3, self.n_head, D // self.n_head).unbind(2)
        q, k = _norm(_rotate(q, cos, sin)), _norm(_rotate(k, cos, sin))
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True)
        else:  # nanochat's decode: write these entries' K/V at the cache position, attend to prefix + causal
            k_cache_BSHC, v_cache_BSHC = kv_cache.get_layer_cache(layer)
            pos = int(kv_cache.cache_seqlens[0])
            k_cache_BSHC[:, pos:pos + T] = k.to(k_cache_BSHC.dtype)
            v_cache_BSHC[:, pos:pos + T] = v.to(v_cache_BSHC.dtype)
            keys, values = k_cache_BSHC[:, :pos + T].to(q.dtype), v_cache_BSHC[:, :pos + T].to(q.dtype)
            visible_TS = torch.ones(T, pos + T, dtype=torch.bool, device=q.device).tril(diagonal=pos)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                               attn_mask=visible_TS)
            if layer == kv_cache.n_layers - 1:
                kv_cache.advance(T)
        x_BTD = x_BTD + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x_BTD + self.fc_out(F.relu(self.fc(_norm(x_BTD))).square())


class TinyGPT(nn.Module):
    """``forward(idx[B, T] | inputs_embeds[B, T, D], targets, cos_sin, loss_reduction)``."""

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        head_dim = cfg.n_embd // cfg.n_head
        cos, sin = rotary_cos_sin(torch.arange(cfg.sequence_len, dtype=torch.float32)[None], head_dim,
                                  dtype=torch.float32)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        bound = 3**0.5 * self.config.n_embd**-0.5
        for block in self.blocks:
            for lin in (block.qkv, block.fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            for lin in (block.proj, block.fc_out):
                nn.init.zeros_(lin.weight)

    @property
    def head_dim(self) -> int:
        return self.config.n_embd // self.config.n_head

    def flops_per_token(self, context: int) -> int:
        """Forward+backward matmul FLOPs per token at attention length ``context`` (nanochat's formula)."""
        params = sum(p.numel() for b in self.blocks for p in b.parameters()) + self.lm_head.weight.numel()
        return 6 * params + 12 * self.config.n_layer * self.config.n_embd * context

    def forward(
        self,
        idx: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss_reduction: str = "mean",
    ) -> torch.Tensor:
        x = self.wte(idx) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        if self.config.sequence_len < T:
            raise ValueError(f"sequence of {T} entries exceeds the model's sequence_len {self.config.sequence_len}")
        cos, sin = cos_sin if cos_sin is not None else (self.cos[:, :T], self.sin[:, :T])
        x = _norm(x)
        for block in self.blocks:
            x = block(x, cos.to(x.dtype), sin.to(x.dtype))
        logits = self.lm_head(_norm(x)).float()
        logits = 15 * torch.tanh(logits / 15)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def get_device(self) -> torch.device:
        return self.wte.weight.device

    def forward_embeds(self, x: torch.Tensor, value_ids: torch.Tensor, targets: torch.Tensor | None,
                       cos: torch.Tensor, sin: torch.Tensor, kv_cache: Any = None) -> torch.Tensor:
        """The patched nanochat ``GPT.forward_embeds``: ``x[R, W, D]`` embeddings, ``cos``/``sin``
        ``[R|1, W, 1, head_dim/2]``; logits ``[R, W, vocab]`` (float32, softcapped) when ``targets`` is
        None, else per-entry NLL ``[R*W]``. With ``kv_cache`` (nanochat's ``KVCache`` duck type) these
        entries' K/V are appended at the cache position and attention covers the cache + them.
        TinyGPT has no value embeddings: ``value_ids`` (-1 = none) is accepted and unused."""
        x = _norm(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos.to(x.dtype), sin.to(x.dtype), kv_cache, layer)
        logits = 15 * torch.tanh(self.lm_head(_norm(x)).float() / 15)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction="none")
