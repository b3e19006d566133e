"""The unnamed sessions a runtime keeps, so that interleaved conversations each continue their own.

A chat host resends the whole conversation each turn; the session whose stored conversation the
prompt continues ingests only the new turn. Several clients of one ``chat_web`` interleave their
turns, so the runtime keeps more than the last session, under one rule (documented in the README):

- at most ``capacity`` sessions (``--mc_max_sessions``): a new one drops the least recently used;
- a session unused for more than ``idle_s`` seconds (``--mc_session_idle_s``, 0 = never) is dropped
  at the next prompt.

A session is continued only by a prompt that repeats its entire stored conversation, so a client
never reaches a history it did not already send (isolation by content, not by connection).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from .session import MCSession


class SessionPool:
    """Least-recently-used unnamed sessions, dropped by ``drop`` (see the module docstring)."""

    def __init__(self, capacity: int, idle_s: float, drop: Callable[[MCSession], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.idle_s, self._drop, self._clock = capacity, idle_s, drop, clock
        self._used: OrderedDict[int, tuple[MCSession, float]] = OrderedDict()
        """id(session) -> (session, last use), least recently used first."""
        self.dropped = 0
        """Sessions dropped so far (by the cap or by idling)."""

    def __len__(self) -> int:
        return len(self._used)

    def __iter__(self) -> Iterator[MCSession]:
        return (session for session, _ in self._used.values())

    def expire(self) -> None:
        """Drop the sessions idle for more than ``idle_s`` (nothing when it is 0)."""
        if self.idle_s <= 0:
            return
        now = self._clock()
        for key, (session, used) in list(self._used.items()):
            if now - used > self.idle_s:
                self._remove(key, session)

    def continuing(self, model: nn.Module, tokens: Sequence[int]) -> tuple[MCSession, list[int]] | None:
        """The session whose conversation ``tokens`` continues, with what it still has to ingest (marked
        as just used), or None."""
        for key, (session, _) in reversed(self._used.items()):
            if session.model is not model or session.closed:
                continue
            new = session.new_tokens(tokens)
            if new is not None:
                self._touch(key, session)
                return session, new
        return None

    def add(self, sessions: Sequence[MCSession]) -> None:
        """Keep ``sessions`` (one prompt's rows, never dropped here); older ones go while over the cap."""
        for session in sessions:
            self._touch(id(session), session)
        keep = {id(s) for s in sessions}
        for key, (session, _) in list(self._used.items()):
            if len(self._used) <= max(self.capacity, len(keep)):
                break
            if key not in keep:
                self._remove(key, session)

    def clear(self) -> None:
        """Drop every session (the runtime closes)."""
        sessions = list(self)
        self._used.clear()
        for session in sessions:
            self._drop(session)

    def _touch(self, key: int, session: MCSession) -> None:
        self._used[key] = (session, self._clock())
        self._used.move_to_end(key)

    def _remove(self, key: int, session: MCSession) -> None:
        del self._used[key]
        self._drop(session)
        self.dropped += 1
