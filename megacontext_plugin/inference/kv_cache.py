"""A KV cache with nanochat's duck type, plus truncation to a reusable prefix.

nanochat's attention (``flash_attn_with_kvcache``) reads ``cache_seqlens`` and
``get_layer_cache(layer)``, writes the new entries' K/V at that position, and the last layer
calls ``advance(T)``. nanochat master's smear also reads ``prev_embedding``: the normalised
embedding of the entry before the first one forwarded (``[B, 1, D]``), or None where that entry is a
gist or there is none; the caller sets it before each forward (``CachedForward``). Setting the
position back (``truncate(p)``) keeps the first ``p`` entries
and lets the next forward overwrite everything after them: that is how a session reuses the
unchanged prefix of its working context after a refocus.
"""

from __future__ import annotations

import torch


class MCKVCache:
    """``k_cache``/``v_cache`` ``[n_layers, B, T_max, H_kv, head_dim]`` and ``cache_seqlens`` ``[B]`` (int32)."""

    def __init__(self, batch_size: int, num_heads: int, seq_len: int, head_dim: int, num_layers: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        self.batch_size = batch_size
        self.max_seq_len = seq_len
        self.n_layers = num_layers
        self.n_heads = num_heads
        self.head_dim = head_dim
        shape = (num_layers, batch_size, seq_len, num_heads, head_dim)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.cache_seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.prev_embedding: torch.Tensor | None = None

    def reset(self) -> None:
        self.cache_seqlens.zero_()

    def get_pos(self) -> int:
        return int(self.cache_seqlens[0].item())

    def get_layer_cache(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_cache[layer_idx], self.v_cache[layer_idx]

    def advance(self, num_tokens: int) -> None:
        self.cache_seqlens += num_tokens

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` entries; the next forward writes from there."""
        if not 0 <= length <= self.max_seq_len:
            raise ValueError(f"cannot truncate a KV cache of {self.max_seq_len} entries to {length}")
        self.cache_seqlens.fill_(length)

    @property
    def nbytes(self) -> int:
        return self.k_cache.numel() * self.k_cache.element_size() * 2
