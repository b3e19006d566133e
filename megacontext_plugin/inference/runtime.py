"""What the plugin's ``generate`` hook calls: the policy (MC or upstream), and the sessions.

Policy. A prompt that fits (``len(tokens) + max_tokens <= budget``, the budget being
``--mc_wc_budget`` or the model's ``sequence_len``) goes to upstream's own decode, unchanged but
for where an answer ends (``decode.ending_at_role_tokens``, D49: the hook runs upstream's
``Engine.generate`` again, re-entered with the hook answering None). A longer one, or any prompt
of a named session (``--mc_session``), is decoded over MegaContext.

Sessions.

- Unnamed (the default): a session is reused when the new prompt continues its conversation (the
  chat CLI and web UI resend the whole conversation each turn: only the new turn is ingested); any
  other prompt gets a fresh session, so independent prompts (evals, other clients) never see each
  other's history. Up to ``--mc_max_sessions`` of them are kept, so interleaved conversations each
  continue their own; the least recently used, and any idle for ``--mc_session_idle_s``, are
  dropped (``pool.SessionPool``). With ``--mc_tree disk`` an unnamed session lives in a temporary
  directory under ``--mc_tree_dir``, removed when the session is dropped or the runtime closes (at
  process exit too); those of a process that could not clean up (killed) are removed by the next
  runtime that makes one there, unless another process holds them open.
- Named (``--mc_session NAME``): one persistent history. With ``--mc_tree disk`` it lives in
  ``--mc_tree_dir/NAME`` (default ``$NANOCHAT_BASE_DIR/megacontext/trees/NAME``): every token is
  committed to the tree as it is generated, so a reopened session (a new process, even after a
  kill) continues where it stopped. A prompt that does not continue the session's current
  conversation (a new process, or the CLI's ``clear``) starts a new conversation *after* the
  stored history (its leading BOS dropped), so the model still sees what came before. A reopened
  session's working context is rebuilt from the tree at its next prompt (the coarsest layout, then LensNet).

``num_samples > 1`` works for unnamed sessions: each row is its own session (the prompt is
ingested per row), decoded in lockstep; a named session holds one history, so it refuses more
than one sample with a clear error.

``listeners`` receive every refocus's ``inference_update`` payload (a dict in the telemetry
schema); ``last_session`` is the session of the last stream (its ``level_map()`` is the working
context of the current answer). With ``log`` set (a server), a long ingestion logs its progress
and stops at ``ingest_limit_s`` (``ingest_watch.IngestWatch``): the stream then ends without a
token, and the same conversation sent again continues the ingestion.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import MCConfig
from ..nets import AuxNets, model_device
from ..private_files import make_private_dirs
from ..telemetry import nanochat_base_dir
from ..tree import remove_if_closed
from .decode import SpecialTokens, decode_stream, ending_at_role_tokens
from .ingest_watch import PROGRESS_EVERY_S, IngestTimeout, IngestWatch
from .pool import SessionPool
from .session import MCSession, SessionError, SessionSettings

UNNAMED_PREFIX = "unnamed-"
"""Directory name prefix of unnamed disk sessions' temporary trees under the tree directory."""


def default_tree_dir(cfg: MCConfig) -> Path:
    """``--mc_tree_dir``, else ``$NANOCHAT_BASE_DIR/megacontext/trees`` (nanochat's default base dir)."""
    if cfg.mc_tree_dir:
        return Path(cfg.mc_tree_dir).expanduser()
    return nanochat_base_dir() / "megacontext" / "trees"


def wants_megacontext(prompt_tokens: int, max_tokens: int | None, budget: int, named: bool) -> bool:
    """The policy: MC for a named session or when prompt + answer would not fit the budget."""
    return named or prompt_tokens + (max_tokens or 0) > budget


class InferenceRuntime:
    """Sessions for one model's aux nets (``nets.AuxNets``: loaded from a checkpoint, or a controller's)."""

    def __init__(self, nets: AuxNets) -> None:
        self.nets = nets
        self.cfg = nets.cfg
        self.settings = SessionSettings.from_config(self.cfg, nets.sequence_len, max_level=nets.lensnet.max_level)
        self.named: dict[str, MCSession] = {}
        self.pool = SessionPool(self.cfg.mc_max_sessions, self.cfg.mc_session_idle_s, self._drop)
        self._temp_dirs: dict[int, Path] = {}
        self._swept = False
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.snapshot_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        """Get every session's shape events: ``(event name, attributes)`` (``MCSession.snapshot_listeners``)."""
        self.last_session: MCSession | None = None
        self.upstream_decoding = False
        """True while upstream's own decode of a prompt that fits starts (``_upstream``): the hook answers None."""
        self.log: Callable[[str], None] | None = None
        """Where a server's ingestion progress and time-limit lines go (None: no progress, no limit)."""
        self.ingest_limit_s = 0.0
        """Seconds one prompt's ingestion may take when ``log`` is set (0: no limit)."""
        self.progress_every_s = PROGRESS_EVERY_S

    @property
    def unnamed(self) -> list[MCSession]:
        """The unnamed sessions kept, least recently used first."""
        return list(self.pool)

    @property
    def budget(self) -> int:
        return self.settings.budget

    def _new_session(self, model: nn.Module, name: str | None) -> MCSession:
        cfg = self.cfg
        path: Path | None = None
        temp: Path | None = None
        if cfg.mc_tree == "disk":
            root = make_private_dirs(default_tree_dir(cfg))
            if not self._swept:  # unnamed trees of a process that could not clean up (killed, or SIGTERM)
                for stale in root.glob(f"{UNNAMED_PREFIX}*"):
                    remove_if_closed(stale)
                self._swept = True
            if name:
                path = root / name
            else:
                path = temp = Path(tempfile.mkdtemp(prefix=UNNAMED_PREFIX, dir=root))
        session = MCSession(model, self.nets.gistnet, self.nets.lensnet, self.settings,
                            aux_dtype=self.nets.aux_dtype, kind=cfg.mc_tree, path=path,
                            fsync=cfg.mc_tree_fsync, name=name or None, listeners=(),
                            snapshot_every=cfg.mc_inference_telemetry_every)
        session.listeners.append(self._broadcast)
        session.snapshot_listeners.append(self._broadcast_snapshot)
        if temp is not None:
            self._temp_dirs[id(session)] = temp
        return session

    def _broadcast(self, payload: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(dict(payload))

    def _broadcast_snapshot(self, name: str, attrs: dict[str, Any]) -> None:
        for listener in self.snapshot_listeners:
            listener(name, dict(attrs))

    def _drop(self, session: MCSession) -> None:
        session.close()
        temp = self._temp_dirs.pop(id(session), None)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    def open_named(self, model: nn.Module, name: str) -> MCSession:
        """The named session (opened, or reopened from disk, on first use)."""
        session = self.named.get(name)
        if session is None:
            session = self.named[name] = self._new_session(model, name)
        elif session.model is not model:
            raise SessionError(f"session {name!r} is already open for another model in this process")
        return session

    def sessions_for(self, model: nn.Module, tokens: Sequence[int], num_samples: int,
                     bos: int | None) -> tuple[list[MCSession], list[list[int]]]:
        """The row sessions for this prompt and, per row, the tokens each still has to ingest."""
        name = self.cfg.mc_session
        if name:
            if num_samples != 1:
                raise SessionError(f"--mc_session {name}: a named session holds one history, so it decodes one "
                                   f"sample at a time (asked for num_samples={num_samples})")
            session = self.open_named(model, name)
            new = session.new_tokens(tokens, bos)
            if new is None:
                new = session.start_conversation(tokens, bos)
            return [session], [new]
        self.pool.expire()
        if num_samples == 1 and (found := self.pool.continuing(model, tokens)) is not None:
            return [found[0]], [found[1]]
        fresh = [self._new_session(model, None) for _ in range(num_samples)]
        self.pool.add(fresh)
        return fresh, [list(tokens) for _ in range(num_samples)]

    def generate(self, engine: Any, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42) -> Iterator[tuple[list[int], list[int]]] | None:
        """The ``generate`` hook's answer: ``stream``'s, or None while upstream's own decode starts (the hook
        re-entered from ``_upstream``)."""
        if self.upstream_decoding:
            return None
        return self.stream(engine, tokens, num_samples, max_tokens, temperature, top_k, seed)[0]

    def stream(self, engine: Any, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
               temperature: float = 1.0, top_k: int | None = None,
               seed: int = 42) -> tuple[Iterator[tuple[list[int], list[int]]], bool]:
        """The answer's token stream, and whether it is decoded over MegaContext (else upstream's own)."""
        if not wants_megacontext(len(tokens), max_tokens, self.budget, bool(self.cfg.mc_session)):
            return self._upstream(engine, tokens, num_samples, max_tokens, temperature, top_k, seed), False
        if num_samples < 1:
            raise SessionError(f"num_samples must be >= 1, got {num_samples}")
        model = engine.model
        tokenizer = engine.tokenizer
        specials = SpecialTokens.from_tokenizer(tokenizer)
        sessions, new = self.sessions_for(model, tokens, num_samples, specials.bos)
        self.last_session = sessions[0]
        engine_module = sys.modules.get(type(engine).__module__)
        calculator = getattr(engine_module, "use_calculator", None)

        def first_logits() -> list[torch.Tensor]:
            return [self._ingest(session, ids) for session, ids in zip(sessions, new, strict=True)]

        stream = decode_stream(sessions, first_logits, max_tokens, temperature, top_k, seed, specials, tokenizer,
                               calculator, model_device(model))
        return (stream if self.log is None else self._ending_at_the_limit(stream, sessions)), True

    def _upstream(self, engine: Any, tokens: list[int], num_samples: int, max_tokens: int | None,
                  temperature: float, top_k: int | None, seed: int) -> Iterator[tuple[list[int], list[int]]]:
        """Upstream's ``Engine.generate`` of ``tokens`` (the hook answers None while it starts: it is called
        on the stream's first ``next``) through ``ending_at_role_tokens``."""
        inner = engine.generate(tokens, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
                                top_k=top_k, seed=seed)
        self.upstream_decoding = True
        try:
            first = next(inner)
        except StopIteration:
            return
        finally:
            self.upstream_decoding = False
        specials = SpecialTokens.from_tokenizer(engine.tokenizer)
        yield from ending_at_role_tokens(itertools.chain([first], inner), specials)

    def _ingest(self, session: MCSession, ids: list[int]) -> torch.Tensor:
        if self.log is None:
            return session.ingest(ids)
        watch = IngestWatch(len(ids), self.ingest_limit_s, self.log, every_s=self.progress_every_s)
        logits = session.ingest(ids, progress=watch)
        watch.finished()
        return logits

    def _ending_at_the_limit(self, stream: Iterator[tuple[list[int], list[int]]],
                             sessions: list[MCSession]) -> Iterator[tuple[list[int], list[int]]]:
        """``stream``, ended without a token when the ingestion stops at its time limit (said in the log)."""
        try:
            yield from stream
        except IngestTimeout as e:
            assert self.log is not None
            self.log(str(e))
            for session in sessions:
                session.flush()

    def close(self) -> None:
        self.pool.clear()
        for session in self.named.values():
            self._drop(session)
        self.named, self.last_session = {}, None
