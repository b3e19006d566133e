"""The base model over a session's working context, with a KV cache reused across steps.

The cache holds the K/V of the first ``cached`` entries of the current WC. Any change of the WC
(a refocus, a relayout) lowers ``cached`` to the first entry that differs (``invalidate``); with
``span_center_scaled`` positions, an entry whose position moved also ends the valid prefix. The
next ``logits`` call truncates the cache there and forwards only the entries from it on, in
chunks of ``PREFILL_CHUNK``: a decode step with no refocus forwards one entry. The output head
runs on the last entry only (``nets.output_head.head_on_last``): a recompute after a refocus
forwards many entries, but only the next token's logits are read.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import WorkingContext, entry_positions
from ..context.inputs import EntryRows, rotary_tables
from ..context.positions import rope_base
from ..nets import activation_dtype
from ..nets.output_head import head_on_last
from .errors import SessionError
from .kv_cache import MCKVCache
from .records import SessionStats
from .settings import SessionSettings

PREFILL_CHUNK = 512
"""Entries per forward when recomputing a long suffix (bounds its activations)."""


class CachedForward:
    """``GPT.forward_embeds`` over entries ``x[W, D]`` with the session's own KV cache."""

    def __init__(self, model: nn.Module, settings: SessionSettings, stats: SessionStats, device: torch.device) -> None:
        self.model, self.settings, self.stats, self.device = model, settings, stats, device
        mcfg = model.config
        self.head_dim = mcfg.n_embd // mcfg.n_head
        self.vocab_size = mcfg.vocab_size
        with torch.inference_mode():
            self.kv = MCKVCache(1, getattr(mcfg, "n_kv_head", mcfg.n_head), settings.budget, self.head_dim,
                                mcfg.n_layer, device, activation_dtype(device))
        self.cached = 0
        """Entries of the current WC whose K/V the cache holds."""
        self.cache_positions: np.ndarray | None = None
        self.logits_V: torch.Tensor | None = None
        """Next-token logits after the last cached entry; None once the WC changed."""

    def invalidate(self, from_entry: int) -> None:
        """Entries from ``from_entry`` on changed (or were appended)."""
        self.cached = min(self.cached, from_entry)
        self.logits_V = None

    def _positions(self, wc: WorkingContext) -> np.ndarray | None:
        """Entry positions when they are not simply ``0..W-1`` (``span_center_scaled``), else None."""
        if self.settings.position_scheme == "ordinal":
            return None
        return np.asarray(entry_positions(wc, self.settings.position_scheme), dtype=np.float32)

    def _rotary(self, wc: WorkingContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary tables ``[1, W, 1, head_dim/2]`` of ``wc``'s entries, or None (the model's own)."""
        s = self.settings
        return rotary_tables(EntryRows.of([wc]), s.position_scheme, s.rope_gist_sigma, self.head_dim,
                             self.model.config.sequence_len, activation_dtype(self.device), self.device,
                             rope_base(self.model))

    def _cos_sin(self, tables: tuple[torch.Tensor, torch.Tensor] | None, start: int, end: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if tables is None:
            return self.model.cos[:, start:end], self.model.sin[:, start:end]  # the model's own table
        return tables[0][:, start:end], tables[1][:, start:end]

    def logits(self, wc: WorkingContext, x_CD: torch.Tensor, vid_C: torch.Tensor) -> torch.Tensor:
        """Forward the entries not in the KV cache; the last entry's next-token logits ``[V]``."""
        W = len(wc)
        if self.settings.budget < W:
            raise SessionError(f"internal: working context of {W} entries over the budget {self.settings.budget}")
        positions_W = self._positions(wc)
        if positions_W is not None and self.cache_positions is not None:
            n = min(self.cached, positions_W.size, self.cache_positions.size)
            moved = np.flatnonzero(self.cache_positions[:n] != positions_W[:n])
            self.cached = int(moved[0]) if moved.size else min(self.cached, n)
        if self.cached >= W and self.logits_V is not None:
            return self.logits_V
        p = min(self.cached, W - 1)
        self.kv.truncate(p)
        logits_1nV = None
        tables = self._rotary(wc)
        for start in range(p, W, PREFILL_CHUNK):
            end = min(W, start + PREFILL_CHUNK)
            cos, sin = self._cos_sin(tables, start, end)
            self.kv.prev_embedding = self._smear_source(x_CD, vid_C, start)
            with head_on_last(self.model, 1):  # only the last entry's logits are read: no [n, V] head
                logits_1nV = self.model.forward_embeds(x_CD[start:end][None], vid_C[start:end][None], None,
                                                       cos, sin, kv_cache=self.kv)
            self.stats.forwards += 1
        assert logits_1nV is not None
        self.stats.entries_forwarded += W - p
        self.stats.entries_reused += p
        self.cached = W
        self.cache_positions = positions_W
        self.logits_V = logits_1nV[0, -1, :self.vocab_size].float()
        return self.logits_V

    def _smear_source(self, x_CD: torch.Tensor, vid_C: torch.Tensor, start: int) -> torch.Tensor | None:
        """``[1, 1, D]``: what nanochat master's smear mixes into entry ``start``, the normalised embedding of
        the entry before it when that one is a token (as ``forward_embeds`` normalises its inputs), else None.
        The pin's model has no smear and never reads it."""
        if start == 0 or int(vid_C[start - 1]) < 0:
            return None
        x_D = x_CD[start - 1].to(self.model.cos.dtype)
        return F.rms_norm(x_D, (x_D.size(-1),))[None, None]
