"""The ``generate`` hook's side of the plugin: one ``InferenceRuntime`` over a set of aux nets, the
telemetry its refocuses go to, and what ``chat_cli`` prints after each answer.

The chat stage opens it in ``setup_model`` (so a bad inference knob, or a named session that
cannot be opened, fails before the first prompt); a training stage whose script samples through
the Engine opens it on the first ``generate`` call, over the nets being trained. For ``chat_web``
(``web=True``) a long ingestion logs its progress to the server's log and is bounded in time
(``--mc_web_ingest_s``).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..nets import AuxNets
from ..telemetry import TelemetryEvent, make_run_provider
from ..telemetry.lifecycle import ClosedAtExit
from .cli_report import answer_report, timed
from .decode import SpecialTokens, without_terminal
from .runtime import InferenceRuntime
from .session import MCSession


class ChatRuntime:
    """MC decoding for the Engine (``InferenceRuntime``) plus its telemetry and answer reports.

    Raises ``ConfigError`` (inference knobs), ``SessionError`` (named session) or
    ``TelemetryConfigError`` (``--mc_telemetry``) while opening; the log lines it has to say are
    in ``messages``.
    """

    def __init__(self, nets: AuxNets, model: nn.Module | None = None, *, answer_reports: bool = False,
                 web: bool = False) -> None:
        self.runtime = InferenceRuntime(nets)
        self._runtime_exit = ClosedAtExit(self.runtime)
        """Sessions closed at process exit too (a server stopped with Ctrl-C): unnamed disk trees removed."""
        if web:
            logger = logging.getLogger("megacontext")
            self.runtime.log = lambda line: logger.info("megacontext: %s", line)
            self.runtime.ingest_limit_s = self.runtime.cfg.mc_web_ingest_s
        self.answer_reports = answer_reports
        """Print each answer's latency and level map (``cli_report``): set for ``chat_cli``."""
        self.messages: list[str] = []
        self._provider_exit: ClosedAtExit | None = None
        try:
            self._send_updates()
            name = self.runtime.cfg.mc_session
            if model is not None and name:
                session = self.runtime.open_named(model, name)
                where = f"disk, {session.path}" if session.path is not None else "ram"
                self.messages.append(f"session {session.name!r} ({where}): {session.num_tokens} tokens of history")
                if session.path is not None and (mode := stat.S_IMODE(os.stat(session.path).st_mode)) & 0o077:
                    self.messages.append(f"session {session.name!r} is readable by other users (mode {mode:o}): "
                                         f"chmod -R go= {session.path} makes it private")
            if web and name:
                self.messages.append(f"chat_web: every conversation of every client goes to session {name!r}")
            elif web:
                cfg = self.runtime.cfg
                idle = f", dropped after {cfg.mc_session_idle_s:g} s idle" if cfg.mc_session_idle_s else ""
                self.messages.append(f"chat_web: each conversation gets its own session (up to "
                                     f"{cfg.mc_max_sessions} kept, least recently used dropped first{idle})")
        except BaseException:
            self.close()
            raise

    @property
    def nets(self) -> AuxNets:
        return self.runtime.nets

    @property
    def last_session(self) -> MCSession | None:
        return self.runtime.last_session

    def _send_updates(self) -> None:
        """Every refocus's ``inference_update``, and the shape events of every
        ``--mc_inference_telemetry_every``-th one, go to the run's provider (``--mc_telemetry``,
        service ``megacontext-chat``); ``none`` sends nothing."""
        cfg = self.runtime.cfg
        if cfg.mc_telemetry == "none":
            return
        provider, _, where = make_run_provider(cfg.mc_telemetry, "chat", telemetry_dir=cfg.mc_telemetry_dir or None)
        self._provider_exit = ClosedAtExit(provider)
        self.runtime.listeners.append(lambda payload: provider.emit(TelemetryEvent("inference_update", payload)))
        self.runtime.snapshot_listeners.append(lambda name, attrs: provider.emit(TelemetryEvent(name, attrs)))
        self.messages.append(f"inference telemetry -> {where}")

    def generate(self, engine: Any, tokens: list[int], **kwargs: Any) -> Iterator[Any] | None:
        """The hook's answer (``InferenceRuntime.generate``), timed for ``chat_cli``."""
        if not self.answer_reports or self.runtime.upstream_decoding:
            return self.runtime.generate(engine, tokens, **kwargs)
        start = time.perf_counter()
        answer, megacontext = self.runtime.stream(engine, tokens, **kwargs)
        runtime = self.runtime

        def report(latency: Any) -> None:
            session = runtime.last_session if megacontext else None
            print("\n" + answer_report(latency, session.render_level_map() if session else None), flush=True)

        specials = SpecialTokens.from_tokenizer(engine.tokenizer)
        return timed(without_terminal(answer, specials), len(tokens), megacontext, start, report)

    def close(self) -> None:
        self._runtime_exit.close()
        if self._provider_exit is not None:
            self._provider_exit.close()
            self._provider_exit = None
