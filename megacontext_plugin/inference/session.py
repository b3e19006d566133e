"""An inference session: one history in a MegaContext tree, its working context, and the decode steps.

The base model (the patched nanochat ``GPT``, or ``TinyGPT`` in tests) never sees more than
``budget`` entries. Everything the user and the model said goes into the tree (``ram`` or
``disk``); the model attends to the working context (WC), a legal tiling of that history by raw
tokens and gists. Names carry shapes: ``W`` WC entries, ``C`` buffer capacity, ``D`` model width,
``V`` vocabulary, ``H`` LensNet's tail.

A session is the decode loop over four parts, each in a module of its own:

- ``conversation.Conversation``: what a resent conversation adds to the stored one;
- ``entries.EntryBuffer``: the WC's entry vectors and value ids, regathered from the first change;
- ``refocus.Refocuser``: LensNet's scores, making room, the focus allocator (after every prompt,
  from the coarsest layout of the history as in training and the evaluation, then every
  ``refocus_every`` generated tokens);
- ``forward.CachedForward``: the base model with a KV cache reused up to the first changed entry.

With ``ordinal`` positions (the default) an unchanged prefix keeps its positions;
``span_center_scaled`` moves every position when the history grows, so each step recomputes the
whole WC (correct, slower).
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import WorkingContext, WorkingContextError
from ..context.positions import rope_base
from ..focus import PROMPT_ROUNDS, fitted_tail, start_layout
from ..nets import model_device, model_wte
from ..tree import MCTree, TreeError, open_tree
from .conversation import Conversation
from .entries import EntryBuffer
from .errors import SessionError
from .forward import PREFILL_CHUNK, CachedForward
from .level_map import level_map, render_level_map
from .records import RefocusRecord, SessionStats, inference_update
from .refocus import Refocused, Refocuser
from .room import first_difference, make_room
from .settings import SessionSettings
from .snapshots import session_snapshots

INGEST_CHUNK = 2048
"""Tokens per tree append while ingesting a long prompt (bounds the ``[n, D]`` embeddings and GistNet's
activations, so memory does not grow with the prompt)."""


def gistnet_version(gistnet: nn.Module) -> int:
    """A 31-bit fingerprint of GistNet's weights: a disk session records it, so its stored gists are
    never read by a model whose GistNet would have made different ones."""
    crc = 0
    for name, tensor in sorted(gistnet.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc & 0x7FFFFFFF


class MCSession:
    """One history and its working context for one model (see the module docstring).

    ``kind="disk"`` with ``path`` reopens an existing session's tree (its history) or creates it.
    Methods run under ``torch.inference_mode``. ``listeners`` get each refocus's
    ``inference_update`` payload (``events`` keeps the last ones); ``snapshot_listeners`` get
    ``(event name, attributes)`` of the shape events of every ``snapshot_every``-th refocus
    (``inference.snapshots``; 0 = none).
    """

    def __init__(self, model: nn.Module, gistnet: nn.Module, lensnet: nn.Module, settings: SessionSettings, *,
                 aux_dtype: torch.dtype = torch.float32, kind: str = "ram", path: str | Path | None = None,
                 fsync: str = "interval", name: str | None = None,
                 listeners: Sequence[Callable[[dict[str, Any]], None]] = (), snapshot_every: int = 0) -> None:
        self.model, self.gistnet, self.settings = model, gistnet, settings
        self.name, self.kind, self.path = name, kind, None if path is None else Path(path)
        self.aux_dtype = aux_dtype
        self.device = model_device(model)
        self.wte = model_wte(model)
        self.tree = self._open_tree(fsync)
        self.stats = SessionStats()
        mcfg = model.config
        self.entries = EntryBuffer(self.tree, self.wte, settings, head_dim=mcfg.n_embd // mcfg.n_head,
                                   sequence_len=mcfg.sequence_len, device=self.device, rope_base=rope_base(model))
        self.forward = CachedForward(model, settings, self.stats, self.device)
        self.refocuser = Refocuser(lensnet, settings, self.stats, aux_dtype=aux_dtype)
        self.conversation = Conversation(self.tree)
        self.wc: WorkingContext | None = None
        self.since_refocus = 0
        self.turn_generated = 0
        self.turn_prompt = 0
        self.turn_start = self.tree.num_tokens
        """First token of the answer being generated (the history length when the prompt was ingested)."""
        self._turn_t0 = time.perf_counter()
        self.refocus_log: deque[RefocusRecord] = deque(maxlen=256)
        self.events: deque[dict[str, Any]] = deque(maxlen=1024)
        self.listeners: list[Callable[[dict[str, Any]], None]] = list(listeners)
        self.snapshot_every = snapshot_every
        self.snapshot_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._refocus_count = 0
        self._snap_tokens = self.tree.num_tokens
        """History length at the last snapshot (``append_tokens`` counts from it)."""
        self.closed = False

    def _open_tree(self, fsync: str) -> MCTree:
        """The history's tree: gists by GistNet, raw embeddings by the model's ``wte`` (D5)."""
        with torch.inference_mode():
            try:
                return open_tree(self.kind, block_size=self.settings.block_size, dim=self.model.config.n_embd,
                                 embed_fn=lambda ids_N: self.wte(ids_N.to(self.device)),
                                 gist_fn=lambda children_MKD: self.gistnet(children_MKD.to(self.aux_dtype)),
                                 dtype=torch.float32, gist_version=gistnet_version(self.gistnet), path=self.path,
                                 fsync=fsync)  # type: ignore[arg-type]
            except TreeError as e:
                where = f"session {self.name!r}" if self.name else "the session's tree"
                raise SessionError(f"{where} cannot be opened: {e}") from None

    # ---- the history ----------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.tree.num_tokens

    def history(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Stored token ids ``[end - start]`` (int64)."""
        end = self.tree.num_tokens if end is None else end
        return self.tree.token_ids(start, end)

    def new_tokens(self, tokens: Sequence[int], bos: int | None = None) -> list[int] | None:
        """What ``tokens`` (a whole conversation) adds to the current one (``Conversation.new_tokens``)."""
        return self.conversation.new_tokens(tokens, bos)

    def start_conversation(self, tokens: Sequence[int], bos: int | None) -> list[int]:
        """Begin a new conversation after the stored history (``Conversation.begin``)."""
        return self.conversation.begin(tokens, bos)

    # ---- the decode steps ---------------------------------------------------------------------
    @torch.inference_mode()
    def ingest(self, token_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Append prompt tokens to the history, refocus, and return the next-token logits ``[V]``.

        ``progress(tokens appended so far)`` runs after each chunk; an exception it raises (a time
        limit) stops the ingestion there: the history keeps the chunks appended (a resent prompt
        continues after them) and the next prompt lays the working context out afresh.
        """
        self._check_open()
        n = len(token_ids)
        ids_N = torch.tensor(list(token_ids), dtype=torch.int64)
        self.turn_generated, self.turn_prompt, self._turn_t0 = 0, n, time.perf_counter()
        if n == 0 and self.tree.num_tokens == 0:
            raise SessionError("nothing to decode from: the prompt is empty and the session holds no history")
        done = 0
        try:
            for start in range(0, n, INGEST_CHUNK):  # one tree append (and GistNet call per level) per chunk
                self.tree.append(ids_N[start:start + INGEST_CHUNK])
                done = min(n, start + INGEST_CHUNK)
                if progress is not None:
                    progress(done)
        except BaseException:
            self.stats.tokens_ingested += done
            self.wc = None  # no longer tiles the history
            raise
        self.stats.tokens_ingested += n
        self.turn_start = self.tree.num_tokens
        if n and self._start_prompt():
            for _ in range(PROMPT_ROUNDS):
                self._refocus("prompt")
            return self._logits()
        if self.wc is None or len(self.wc) + n > self.entries.capacity:
            self._relayout()
        elif n:
            ids_dev = ids_N.to(self.device)
            self._append(ids_dev, self.wte(ids_dev))
        if n or self.forward.logits_V is None:
            self._refocus("prompt")
        return self._logits()

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
        self._append(ids_dev, emb_1D)
        self.since_refocus += 1
        self.turn_generated += 1
        self.stats.tokens_generated += 1

    @torch.inference_mode()
    def advance(self) -> torch.Tensor:
        """Refocus if ``refocus_every`` tokens arrived since the last one, then the next-token logits ``[V]``."""
        self._check_open()
        if self.since_refocus >= self.settings.refocus_every:
            self._refocus("interval")
        return self._logits()

    def step(self, token: int) -> torch.Tensor:
        """``accept(token)`` then ``advance()``."""
        self.accept(token)
        return self.advance()

    # ---- the working context ------------------------------------------------------------------
    def _append(self, ids_n: torch.Tensor, emb_nD: torch.Tensor) -> None:
        """Raw tokens at the end of the WC (the KV cache keeps every entry before them)."""
        assert self.wc is not None
        W = len(self.wc)
        self.wc = self.wc.append(int(ids_n.shape[0]))
        self.entries.append(W, emb_nD, ids_n)
        self.forward.invalidate(W)

    def _start_prompt(self) -> bool:
        """Lay a prompt's history out as refocus starts from it in training and in the evaluation
        (``focus.start_layout``: the coarsest tiling, the protected tail raw, shortened where a long
        history leaves no room to open anything: ``focus.fitted_tail``), with a fresh allocator
        plan, so that LensNet has the whole budget to open what the prompt needs. False, changing
        nothing, where the history fits raw in the room kept free for the answer (nothing to choose) or its
        coarsest tiling does not fit (the recency layout and room-making handle it)."""
        s = self.settings
        n = self.tree.num_tokens
        if n <= s.budget - s.headroom:
            return False
        tail = fitted_tail(n, s.block_size, s.protected, s.budget - s.headroom)
        wc = start_layout(n, s.block_size, tail)
        if len(wc) > s.budget - s.headroom or int(wc.levels.max(initial=0)) > s.max_level:
            return False
        self.refocuser.restart(tail)
        self._install(wc)
        return True

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

    def _install(self, wc: WorkingContext, from_scratch: bool = False) -> None:
        """Make ``wc`` current: regather the entries from the first changed one."""
        p = 0 if from_scratch or self.wc is None else first_difference(self.wc, wc)
        self.entries.write(wc, p)
        self.forward.invalidate(p)
        self.wc = wc

    def _refocus(self, reason: str) -> RefocusRecord:
        """``reason``: ``prompt`` (new prompt tokens), ``interval`` or ``room`` (the budget is full)."""
        assert self.wc is not None
        t0 = time.perf_counter()
        wc0 = self.wc
        answer_from = None if reason == "prompt" else self.turn_start
        n = self.tree.num_tokens
        tail_HD = self.tree.level_slice(0, max(0, n - self.settings.horizon), n).to(self.device)
        done = self.refocuser.refocus(wc0, self.entries.x_CD[:len(wc0)],
                                      lambda wc: self.entries.embeddings_of(wc0, wc), answer_from, tail_HD)
        if done.wc is not wc0:
            self._install(done.wc)
        self.since_refocus = 0
        record = RefocusRecord(reason, self.turn_generated, len(wc0), len(done.wc), done.expands, done.collapses,
                               done.forced_collapses, self.forward.cached, done.lens_ms,
                               (time.perf_counter() - t0) * 1e3)
        self.refocus_log.append(record)
        self._emit(record)
        if self.snapshot_every and self._refocus_count % self.snapshot_every == 0 and self.snapshot_listeners:
            self._emit_snapshots(wc0, done)
        self._refocus_count += 1
        return record

    def _logits(self) -> torch.Tensor:
        assert self.wc is not None
        return self.forward.logits(self.wc, self.entries.x_CD, self.entries.vid_C)

    # ---- telemetry and the level map -----------------------------------------------------------
    def _emit(self, record: RefocusRecord) -> None:
        assert self.wc is not None
        payload = inference_update(record, prompt_tokens=self.turn_prompt, context_tokens=self.wc.num_tokens,
                                   refocus_every=self.settings.refocus_every,
                                   elapsed_s=time.perf_counter() - self._turn_t0)
        self.events.append(payload)
        for listener in self.listeners:
            listener(dict(payload))

    def _emit_snapshots(self, before: WorkingContext, done: Refocused) -> None:
        s = self.settings
        events = session_snapshots(self.tree, before, done, budget=s.budget, recent_tokens=s.protected,
                                   appended=self.tree.num_tokens - self._snap_tokens)
        self._snap_tokens = self.tree.num_tokens
        common = {"step": self.turn_generated, "session": "inference"}
        for name, attrs in events:
            for listener in self.snapshot_listeners:
                listener(name, attrs | common)

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
    "INGEST_CHUNK",
    "PREFILL_CHUNK",
    "MCSession",
    "RefocusRecord",
    "SessionError",
    "SessionSettings",
    "SessionStats",
    "first_difference",
    "gistnet_version",
    "make_room",
]
