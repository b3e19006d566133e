"""An inference session: one history in a MegaContext tree, its working context, and a KV cache.

The base model (the patched nanochat ``GPT``, or ``TinyGPT`` in tests) never sees more than
``budget`` entries. Everything the user and the model said goes into the tree (``ram`` or
``disk``); the model attends to the working context (WC), a legal tiling of that history by raw
tokens and gists. Names carry shapes: ``W`` WC entries, ``C`` buffer capacity, ``D`` model width,
``V`` vocabulary, ``H`` LensNet's tail.

Cadence. After every prompt (or continuation of one) and then every ``refocus_every`` generated
tokens, LensNet scores every WC entry against the last ``horizon`` tokens and the WC is
refocused:

1. *make room* (only when the next ``refocus_every`` tokens would not fit in the budget):
   collapse sibling groups into their parent until at most ``budget - headroom`` entries remain.
   Groups LensNet calls cheap (mean utility below ``-collapse_threshold``) go first, most
   negative first; groups LensNet wants kept, or that flipped within the cooldown, go last. Among
   groups without a LensNet opinion: at a prompt (a new turn) the oldest first, which rebalances
   the whole context into the recency shape (old history coarse, recent history raw); while an
   answer is generated, the answer's own tokens that left the protected tail first (oldest
   first), so the context laid out for the question stays put and the KV cache is reused up to
   just before the tail instead of being recomputed from the start of the context;
2. the focus allocator (``focus.FocusAllocator``) expands and collapses by LensNet's utilities
   within ``budget - refocus_every`` entries (thresholds, cooldown, protected tail).

KV reuse. The cache holds the K/V of the first ``cached`` entries of the current WC. Any change
of the WC (a refocus, a relayout, new positions) lowers ``cached`` to the first entry that
differs in level, node or position; the next forward truncates the cache there and recomputes
only from that entry on (``MCKVCache.truncate``). A decode step with no refocus forwards one
entry. With ``ordinal`` positions (the default) an unchanged prefix keeps its positions;
``span_center_scaled`` moves every position when the history grows, so each step recomputes
the whole WC (correct, slower).

The session also remembers where the current conversation starts in the history, so a caller
that sends the whole conversation each turn (nanochat's chat CLI and web UI) only adds what is
new (``new_tokens``).
"""

from __future__ import annotations

import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, MCConfig
from ..context import WorkingContext, WorkingContextError, entry_positions, max_representable_level
from ..context.inputs import EntryRows, ModelInputs, TreeSource, model_inputs, rotary_tables
from ..focus import CooldownTracker, FocusAllocator, FocusConfig
from ..nets import activation_dtype, model_device, model_wte
from ..tree import MCTree, TreeError, open_tree
from .kv_cache import MCKVCache
from .level_map import level_map, render_level_map

PREFILL_CHUNK = 512
"""Entries per forward when recomputing a long suffix (bounds the ``[1, n, V]`` logits tensor)."""
INGEST_CHUNK = 2048
"""Tokens per tree append while ingesting a long prompt (bounds the ``[n, D]`` embeddings and GistNet's
activations, so memory does not grow with the prompt)."""


class SessionError(ValueError):
    """A session cannot be opened or used as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs from the knobs and the model (see ``from_config``)."""

    budget: int
    """W_max: entries the base model attends to (KV-cache capacity)."""
    refocus_every: int
    """Generated tokens between refocuses."""
    headroom: int
    """Entries freed when the WC is full (>= ``refocus_every``)."""
    block_size: int
    protected: int
    """Raw tail never edited: ``max(--allocator_recent_tokens, H)``, the prompt's tail as in training."""
    horizon: int
    """Tail tokens LensNet scores the entries against."""
    position_scheme: str
    rope_gist_sigma: float
    max_level: int
    """Highest gist level (LensNet embeds levels up to its ``max_level``)."""
    focus: FocusConfig

    @classmethod
    def from_config(cls, cfg: MCConfig, sequence_len: int, max_level: int = 16) -> SessionSettings:
        """Settings for a model trained at ``sequence_len``; ``ConfigError`` naming the flags if
        the budget leaves no room for the raw tail, the headroom and the history's gists."""
        cfg = cfg.for_model(sequence_len)
        budget = cfg.wc_budget(sequence_len)
        every = cfg.mc_refocus_every
        headroom = max(cfg.mc_wc_headroom or budget // 8, every)
        protected = cfg.prompt_tail(sequence_len)
        K = cfg.block_size
        top = min(max_level, max_representable_level(K))
        gists = 2 * (K - 1)  # the least room for older history (a very long one needs about K-1 per level)
        if protected + headroom + gists > budget:
            raise ConfigError(
                f"the working-context budget ({budget}) leaves no room at inference for the raw tail "
                f"({protected}: --allocator_recent_tokens/--mc_horizon), the headroom ({headroom}: "
                f"--mc_wc_headroom/--mc_refocus_every) and the gists of older history ({gists} with --block_size "
                f"{K}); lower those or raise --mc_wc_budget")
        soft = min(cfg.allocator_soft_max_length or budget, budget - every)
        focus = FocusConfig(
            budget=budget - every, type=cfg.allocator_type,  # type: ignore[arg-type]
            expand_threshold=cfg.allocator_expand_threshold, collapse_threshold=cfg.allocator_collapse_threshold,
            max_replacements=cfg.allocator_max_replacements, iterations=cfg.allocator_iterations,
            soft_max_length=soft, recent_tokens=protected, cooldown=cfg.allocator_cooldown,
            sample_top_k=cfg.allocator_sample_top_k, sample_temperature=cfg.allocator_sample_temperature,
            seed=cfg.mc_seed, max_level=top, expand_neighbours=cfg.allocator_expand_neighbours,
        )
        return cls(budget, every, headroom, K, protected, cfg.mc_horizon, cfg.mc_position_scheme,
                   cfg.mc_rope_gist_sigma, top, focus)


@dataclass
class SessionStats:
    """Counters over the session's life (tests and the benchmark read them)."""

    lens_calls: int = 0
    refocuses: int = 0
    relayouts: int = 0
    expands: int = 0
    collapses: int = 0
    forced_collapses: int = 0
    forwards: int = 0
    entries_forwarded: int = 0
    entries_reused: int = 0
    tokens_ingested: int = 0
    tokens_generated: int = 0


@dataclass(frozen=True)
class RefocusRecord:
    """One refocus: what changed and what it cost."""

    reason: str
    """``prompt`` (new prompt tokens), ``interval`` (every ``refocus_every`` tokens) or ``room``."""
    step: int
    """Tokens generated in this turn when it happened."""
    length_before: int
    length_after: int
    expands: int
    collapses: int
    forced_collapses: int
    first_changed: int
    """KV-cache entries still valid after this refocus: the first entry that changed, or the cache's
    length when nothing before it did (the ``inference_update`` payload's ``kv_reused_tokens``)."""
    lens_ms: float
    total_ms: float


def gistnet_version(gistnet: nn.Module) -> int:
    """A 31-bit fingerprint of GistNet's weights: a disk session records it, so its stored gists are
    never read by a model whose GistNet would have made different ones."""
    crc = 0
    for name, tensor in sorted(gistnet.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc & 0x7FFFFFFF


def first_difference(a: WorkingContext, b: WorkingContext) -> int:
    """First entry index where ``a`` and ``b`` differ (level or node); the shorter length if one
    is a prefix of the other."""
    n = min(len(a), len(b))
    diff = np.flatnonzero((a.levels[:n] != b.levels[:n]) | (a.indices[:n] != b.indices[:n]))
    return int(diff[0]) if diff.size else n


def make_room(wc: WorkingContext, utilities_W: np.ndarray, target: int, recent_tokens: int, max_level: int,
              collapse_threshold: float = 0.1, cooldown: CooldownTracker | None = None, now: int = 0,
              prefer_from: int | None = None) -> tuple[WorkingContext, np.ndarray, np.ndarray, np.ndarray]:
    """Collapse sibling groups until ``len(wc) <= target`` (see the module docstring for the order).

    Order: groups in cooldown last; then by LensNet's opinion (mean utility below
    ``-collapse_threshold`` first, most negative first; above ``+collapse_threshold`` last); among
    groups without an opinion, those starting at or after token ``prefer_from`` (the answer being
    generated) first; then oldest first.

    Returns ``(wc, utilities of the new WC, levels, indices of the parents made)``; a parent's
    utility is its children's mean (the allocator's collapse utility). A round collapses as many
    groups as the excess needs, so the loop runs about once per level. ``SessionError`` if no
    legal collapse is left above ``target`` (the budget is too small for this history).
    """
    K = wc.block_size
    u_W = np.asarray(utilities_W, dtype=np.float32)
    made_levels: list[np.ndarray] = []
    made_indices: list[np.ndarray] = []
    while len(wc) > target:
        starts_C = wc.collapsible_starts(recent_tokens, max_level)
        if starts_C.size == 0:
            raise SessionError(
                f"cannot fit {wc.num_tokens} tokens of history into {target} working-context entries with the "
                f"last {recent_tokens} raw and gists up to level {max_level}: raise the budget or lower the tail")
        need = math.ceil((len(wc) - target) / (K - 1))
        members_CK = starts_C[:, None] + np.arange(K)
        mean_C = u_W[members_CK].mean(axis=1, dtype=np.float64)
        opinion_C = np.where(mean_C < -collapse_threshold, mean_C, np.where(mean_C > collapse_threshold, 1.0, 0.0))
        parent_lv_C, parent_ix_C = wc.levels[starts_C] + 1, wc.indices[starts_C] // K
        blocked_C = (cooldown.blocked(parent_lv_C, parent_ix_C, now) if cooldown is not None
                     else np.zeros(starts_C.size, dtype=bool))
        later_C = (wc.starts[starts_C] < prefer_from) if prefer_from is not None else np.zeros(starts_C.size, bool)
        order = np.lexsort((starts_C, later_C, opinion_C, blocked_C))  # last key first: blocked, opinion, region, age
        pick = np.sort(order[:need])
        chosen_M = starts_C[pick]
        made_levels.append(parent_lv_C[pick])
        made_indices.append(parent_ix_C[pick])
        keep_W = np.ones(len(wc), dtype=bool)
        keep_W[(chosen_M[:, None] + np.arange(1, K)).ravel()] = False
        u_W = u_W.copy()
        u_W[chosen_M] = mean_C[pick].astype(np.float32)
        u_W = u_W[keep_W]
        wc = wc.edit(collapse=chosen_M, recent_tokens=recent_tokens, max_level=max_level)
    empty = np.zeros(0, dtype=np.int64)
    levels = np.concatenate(made_levels).astype(np.int64) if made_levels else empty
    indices = np.concatenate(made_indices).astype(np.int64) if made_indices else empty
    return wc, u_W, levels, indices


class MCSession:
    """One history and its working context for one model (see the module docstring).

    ``kind="disk"`` with ``path`` reopens an existing session's tree (its history) or creates it.
    Methods run under ``torch.inference_mode``. ``listeners`` get each refocus's
    ``inference_update`` payload (``events`` keeps the last ones).
    """

    def __init__(self, model: nn.Module, gistnet: nn.Module, lensnet: nn.Module, settings: SessionSettings, *,
                 aux_dtype: torch.dtype = torch.float32, kind: str = "ram", path: str | Path | None = None,
                 fsync: str = "interval", name: str | None = None,
                 listeners: Sequence[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.model, self.gistnet, self.lensnet, self.settings = model, gistnet, lensnet, settings
        self.name, self.kind, self.path = name, kind, None if path is None else Path(path)
        self.aux_dtype = aux_dtype
        self.device = model_device(model)
        self.wte = model_wte(model)
        self.dtype = self.wte.weight.dtype
        mcfg = model.config
        self.head_dim = mcfg.n_embd // mcfg.n_head
        self.vocab_size = mcfg.vocab_size
        self.gist_version = gistnet_version(gistnet)
        with torch.inference_mode():
            try:
                self.tree: MCTree = open_tree(
                    kind, block_size=settings.block_size, dim=mcfg.n_embd, embed_fn=self._embed, gist_fn=self._gist,
                    dtype=torch.float32, gist_version=self.gist_version, path=self.path,
                    fsync=fsync,  # type: ignore[arg-type]
                )
            except TreeError as e:
                where = f"session {name!r}" if name else "the session's tree"
                raise SessionError(f"{where} cannot be opened: {e}") from None
            C = settings.budget
            kv_dtype = activation_dtype(self.device)
            self.kv = MCKVCache(1, getattr(mcfg, "n_kv_head", mcfg.n_head), C, self.head_dim, mcfg.n_layer,
                                self.device, kv_dtype)
            self.x_CD = torch.zeros(2 * C, mcfg.n_embd, dtype=self.dtype, device=self.device)
            """Embeddings of the current WC's entries; twice the budget so a continuation may overflow
            it until the refocus that follows makes room."""
            self.vid_C = torch.full((2 * C,), -1, dtype=torch.int64, device=self.device)
            """Value-embedding ids of the entries: the token for a raw entry, -1 for a gist."""
        self.source = TreeSource(self.tree, self.wte, device=self.device, dtype=self.dtype)
        """Where entry vectors come from: gists from the tree, raw tokens through the model's ``wte``."""
        self.allocator = FocusAllocator(settings.focus)
        self.wc: WorkingContext | None = None
        self.cached = 0
        self.cache_positions: np.ndarray | None = None
        self.logits_V: torch.Tensor | None = None
        self.since_refocus = 0
        self.conv_start = self.tree.num_tokens
        """Where the current conversation's tokens start in the history."""
        self.conv_skip = 0
        """Leading tokens of the caller's conversation that are not stored (a BOS dropped on continuing)."""
        self.turn_generated = 0
        self.turn_prompt = 0
        self.turn_start = self.tree.num_tokens
        """First token of the answer being generated (the history length when the prompt was ingested)."""
        self._turn_t0 = time.perf_counter()
        self.stats = SessionStats()
        self.refocus_log: deque[RefocusRecord] = deque(maxlen=256)
        self.events: deque[dict[str, Any]] = deque(maxlen=1024)
        self.listeners: list[Callable[[dict[str, Any]], None]] = list(listeners)
        self.closed = False

    # ---- tree callables -----------------------------------------------------------------------
    def _embed(self, ids_N: torch.Tensor) -> torch.Tensor:
        return self.wte(ids_N.to(self.device))

    def _gist(self, children_MKD: torch.Tensor) -> torch.Tensor:
        return self.gistnet(children_MKD.to(self.aux_dtype))

    # ---- conversation bookkeeping ---------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.tree.num_tokens

    def history(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Stored token ids ``[end - start]`` (int64)."""
        end = self.tree.num_tokens if end is None else end
        return self.tree.token_ids(start, end)

    def new_tokens(self, tokens: Sequence[int], bos: int | None = None) -> list[int] | None:
        """What ``tokens`` (a whole conversation) adds to the current one, or None if it does not
        continue it (an empty list: nothing new). With no conversation yet (a new or reopened
        session) every prompt starts one (``start_conversation``)."""
        stored = self.tree.num_tokens - self.conv_start
        if stored == 0 and self.conv_skip == 0:
            return self.start_conversation(tokens, bos)
        head = len(tokens) - self.conv_skip
        if head < stored or stored < 0:
            return None
        mine = self.tree.token_ids(self.conv_start, self.tree.num_tokens)
        theirs = torch.tensor(list(tokens[self.conv_skip:self.conv_skip + stored]), dtype=torch.int64)
        if not torch.equal(mine, theirs):
            return None
        return list(tokens[self.conv_skip + stored:])

    def start_conversation(self, tokens: Sequence[int], bos: int | None) -> list[int]:
        """Begin a new conversation after the stored history; returns the tokens to add. A leading
        BOS is dropped when there is history before it, so the turn reads as the history's next."""
        self.conv_start = self.tree.num_tokens
        self.conv_skip = 1 if self.conv_start > 0 and len(tokens) > 0 and tokens[0] == bos else 0
        return list(tokens[self.conv_skip:])

    # ---- the public steps -----------------------------------------------------------------------
    @torch.inference_mode()
    def ingest(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Append prompt tokens to the history, refocus, and return the next-token logits ``[V]``."""
        self._check_open()
        n = len(token_ids)
        ids_N = torch.tensor(list(token_ids), dtype=torch.int64)
        self.turn_generated, self.turn_prompt, self._turn_t0 = 0, n, time.perf_counter()
        if n == 0 and self.tree.num_tokens == 0:
            raise SessionError("nothing to decode from: the prompt is empty and the session holds no history")
        for start in range(0, n, INGEST_CHUNK):  # one tree append (and GistNet call per level) per chunk
            self.tree.append(ids_N[start:start + INGEST_CHUNK])
        self.stats.tokens_ingested += n
        self.turn_start = self.tree.num_tokens
        cap = self.x_CD.shape[0]
        if self.wc is None or len(self.wc) + n > cap:
            self._relayout()
        elif n:
            W = len(self.wc)
            self.wc = self.wc.append(n)
            ids_dev = ids_N.to(self.device)
            self.x_CD[W:W + n] = self.wte(ids_dev)
            self.vid_C[W:W + n] = ids_dev
        if n or self.logits_V is None:
            self._refocus("prompt")
        return self._sync()

    @torch.inference_mode()
    def accept(self, token: int) -> None:
        """Append one generated (or forced) token to the history and the WC; no forward yet."""
        self._check_open()
        assert self.wc is not None, "ingest a prompt first"
        if len(self.wc) >= self.settings.budget:
            self._refocus("room")
        ids_1 = torch.tensor([token], dtype=torch.int64)
        ids_dev = ids_1.to(self.device)
        emb_1D = self.wte(ids_dev)
        self.tree.append(ids_1, emb_1D)
        W = len(self.wc)
        self.wc = self.wc.append(1)
        self.x_CD[W] = emb_1D[0]
        self.vid_C[W] = ids_dev[0]
        self.since_refocus += 1
        self.turn_generated += 1
        self.stats.tokens_generated += 1
        self.logits_V = None

    @torch.inference_mode()
    def advance(self) -> torch.Tensor:
        """Refocus if ``refocus_every`` tokens arrived since the last one, then the next-token logits ``[V]``."""
        self._check_open()
        if self.since_refocus >= self.settings.refocus_every:
            self._refocus("interval")
        return self._sync()

    def step(self, token: int) -> torch.Tensor:
        """``accept(token)`` then ``advance()``."""
        self.accept(token)
        return self.advance()

    # ---- working context -----------------------------------------------------------------------
    def _relayout(self) -> None:
        """A fresh recency layout of the whole history (cold start, reopen, or a paste longer than the buffer)."""
        s = self.settings
        try:
            wc = WorkingContext.recency(self.tree.num_tokens, s.budget - s.headroom, s.block_size,
                                        recent_tokens=s.protected, max_level=s.max_level)
        except WorkingContextError as e:
            raise SessionError(f"no working context fits: {e}") from None
        self._install(wc, from_scratch=True)
        self.stats.relayouts += 1

    def _install(self, wc: WorkingContext, from_scratch: bool = False) -> int:
        """Make ``wc`` current: regather embeddings from the first changed entry; returns that entry."""
        p = 0 if from_scratch or self.wc is None else first_difference(self.wc, wc)
        W = len(wc)
        if self.x_CD.shape[0] < W:
            raise SessionError(f"working context of {W} entries exceeds the session's buffer")
        x_nD, vid_n = self._gather(wc, p)
        self.x_CD[p:W] = x_nD
        self.vid_C[p:W] = vid_n
        self.cached = min(self.cached, p)
        self.wc = wc
        self.logits_V = None
        return p

    def _inputs(self, wc: WorkingContext, start: int) -> ModelInputs:
        """The model's inputs for entries ``[start, W)`` of ``wc`` (``context.inputs.model_inputs``: the
        path training and evaluation share), with the rotary tables of the whole working context."""
        s = self.settings
        return model_inputs(self.source, EntryRows.of([wc]), scheme=s.position_scheme, sigma_scale=s.rope_gist_sigma,
                            head_dim=self.head_dim, sequence_len=self.model.config.sequence_len,
                            rotary_dtype=activation_dtype(self.device),
                            from_entry=start)

    def _gather(self, wc: WorkingContext, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[n, D]`` (model dtype, device) and value ids ``[n]`` of entries ``[start, W)``."""
        inputs = self._inputs(wc, start)
        return inputs.inputs_RWD[0], inputs.value_ids_RW[0]

    def _embeddings_of(self, wc: WorkingContext) -> torch.Tensor:
        """``[W, D]`` for a WC that may differ from the current one (allocator rounds)."""
        assert self.wc is not None
        p = first_difference(self.wc, wc)
        return torch.cat([self.x_CD[:p], self._gather(wc, p)[0]])

    def _score(self, wc: WorkingContext, x_WD: torch.Tensor, tail_HD: torch.Tensor) -> np.ndarray:
        """LensNet utilities ``[W]`` (float32 numpy) of ``wc``'s entries against the tail."""
        levels = torch.from_numpy(wc.levels.astype(np.int64)).to(self.device)[None]
        spans = torch.from_numpy(wc.widths).to(self.device)[None]
        scores_1W = self.lensnet(x_WD[None].to(self.aux_dtype), levels, spans, tail_HD[None].to(self.aux_dtype))
        self.stats.lens_calls += 1
        return scores_1W[0].float().cpu().numpy()

    def _refocus(self, reason: str) -> RefocusRecord:
        assert self.wc is not None
        s = self.settings
        t0 = time.perf_counter()
        wc0 = self.wc
        W0 = len(wc0)
        H = min(s.horizon, W0)
        tail_HD = self.x_CD[W0 - H:W0]  # the protected tail is raw: these are the last H tokens
        u0 = self._score(wc0, self.x_CD[:W0], tail_HD)
        lens_s = time.perf_counter() - t0
        wc1, u1 = wc0, u0
        forced = 0
        if W0 + s.refocus_every > s.budget:
            now = self.allocator.refocus_count
            answer = None if reason == "prompt" else self.turn_start  # see the module docstring
            wc1, u1, lv, ix = make_room(wc0, u0, s.budget - s.headroom, s.protected, s.max_level,
                                        s.focus.collapse_threshold, self.allocator.cooldown_tracker, now, answer)
            self.allocator.cooldown_tracker.record(lv, ix, now)  # the allocator may not undo them at once
            forced = int(lv.size)

        def scorer(wc: WorkingContext) -> np.ndarray:
            nonlocal lens_s
            if wc is wc1:
                return u1
            t = time.perf_counter()
            u = self._score(wc, self._embeddings_of(wc), tail_HD)
            lens_s += time.perf_counter() - t
            return u

        wc2, report = self.allocator.refocus(wc1, scorer)
        if wc2 is not wc0:
            self._install(wc2)
        self.since_refocus = 0
        st = self.stats
        st.refocuses += 1
        st.expands += report.expands
        st.collapses += report.collapses
        st.forced_collapses += forced
        record = RefocusRecord(reason, self.turn_generated, W0, len(wc2), report.expands, report.collapses, forced,
                               self.cached, lens_s * 1e3, (time.perf_counter() - t0) * 1e3)
        self.refocus_log.append(record)
        self._emit(record)
        return record

    # ---- the base model ------------------------------------------------------------------------
    def _positions(self, wc: WorkingContext) -> np.ndarray | None:
        """Entry positions when they are not simply ``0..W-1`` (``span_center_scaled``), else None."""
        if self.settings.position_scheme == "ordinal":
            return None
        return np.asarray(entry_positions(wc, self.settings.position_scheme), dtype=np.float32)

    def _rotary(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary tables ``[1, W, 1, head_dim/2]`` of the current WC's entries, or None (the model's own)."""
        assert self.wc is not None
        s = self.settings
        return rotary_tables(EntryRows.of([self.wc]), s.position_scheme, s.rope_gist_sigma, self.head_dim,
                             self.model.config.sequence_len,
                             activation_dtype(self.device), self.device)

    def _cos_sin(self, tables: tuple[torch.Tensor, torch.Tensor] | None, start: int, end: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if tables is None:
            return self.model.cos[:, start:end], self.model.sin[:, start:end]  # the model's own table
        return tables[0][:, start:end], tables[1][:, start:end]

    def _sync(self) -> torch.Tensor:
        """Forward the entries not in the KV cache; the last entry's next-token logits ``[V]``."""
        assert self.wc is not None
        W = len(self.wc)
        if self.settings.budget < W:
            raise SessionError(f"internal: working context of {W} entries over the budget {self.settings.budget}")
        positions_W = self._positions(self.wc)
        if positions_W is not None and self.cache_positions is not None:
            n = min(self.cached, positions_W.size, self.cache_positions.size)
            moved = np.flatnonzero(self.cache_positions[:n] != positions_W[:n])
            self.cached = int(moved[0]) if moved.size else min(self.cached, n)
        if self.cached >= W and self.logits_V is not None:
            return self.logits_V
        p = min(self.cached, W - 1)
        self.kv.truncate(p)
        logits_1nV = None
        tables = self._rotary()
        for start in range(p, W, PREFILL_CHUNK):
            end = min(W, start + PREFILL_CHUNK)
            cos, sin = self._cos_sin(tables, start, end)
            logits_1nV = self.model.forward_embeds(self.x_CD[start:end][None], self.vid_C[start:end][None], None,
                                                   cos, sin, kv_cache=self.kv)
            self.stats.forwards += 1
        assert logits_1nV is not None
        self.stats.entries_forwarded += W - p
        self.stats.entries_reused += p
        self.cached = W
        self.cache_positions = positions_W
        self.logits_V = logits_1nV[0, -1, :self.vocab_size].float()
        return self.logits_V

    @torch.inference_mode()
    def full_recompute_logits(self) -> torch.Tensor:
        """Next-token logits ``[V]`` of the current WC computed from scratch, without the KV cache
        (the reference the cached path must match)."""
        assert self.wc is not None
        W = len(self.wc)
        cos, sin = self._cos_sin(self._rotary(), 0, W)
        logits = self.model.forward_embeds(self.x_CD[:W][None], self.vid_C[:W][None], None, cos, sin)
        return logits[0, -1, :self.vocab_size].float()

    # ---- telemetry and the level map -----------------------------------------------------------
    def _emit(self, record: RefocusRecord) -> None:
        assert self.wc is not None
        elapsed = time.perf_counter() - self._turn_t0
        payload: dict[str, Any] = {
            "tokens_generated": self.turn_generated,
            "refocused": True,
            "prompt_tokens": self.turn_prompt,
            "context_tokens": self.wc.num_tokens,
            "kv_reused_tokens": record.first_changed,
            "refocus_interval": self.settings.refocus_every,
            "latency_ms": record.total_ms,
            "step": self.turn_generated,
            "session": "inference",
        }
        if self.turn_generated and elapsed > 0:
            payload["tokens_per_s"] = self.turn_generated / elapsed
        self.events.append(payload)
        for listener in self.listeners:
            listener(dict(payload))

    def level_map(self, width: int = 64) -> dict[str, Any]:
        """The current WC's level map (``level_map.level_map``), JSON-able."""
        assert self.wc is not None, "no working context yet"
        return level_map(self.wc, self.settings.budget, width)

    def render_level_map(self, width: int = 64) -> str:
        assert self.wc is not None, "no working context yet"
        return render_level_map(self.wc, self.settings.budget, width)

    def describe(self) -> dict[str, Any]:
        """Stats and the last refocus, for logs and tests."""
        last = asdict(self.refocus_log[-1]) if self.refocus_log else None
        return {"name": self.name, "kind": self.kind, "num_tokens": self.tree.num_tokens,
                "wc_entries": None if self.wc is None else len(self.wc), "stats": asdict(self.stats),
                "last_refocus": last}

    # ---- lifetime ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise SessionError(f"session {self.name!r} is closed")

    def flush(self) -> None:
        """Make the history durable per the tree's fsync policy (end of a turn)."""
        if not self.closed:
            self.tree.flush()

    def close(self) -> None:
        if not self.closed:
            self.tree.close()
            self.closed = True


__all__ = [
    "MCSession",
    "RefocusRecord",
    "SessionError",
    "SessionSettings",
    "SessionStats",
    "first_difference",
    "gistnet_version",
    "make_room",
]
