"""Progress lines and a time limit for ingesting one long prompt (a web server's request).

A server computes one request at a time: a conversation of millions of tokens would hold every
other client for as long as it takes. ``IngestWatch`` is the ``progress`` callback of
``MCSession.ingest``: every ``every_s`` seconds it logs how far the ingestion got, and past
``limit_s`` it stops it with ``IngestTimeout``. What was appended stays in the session's history,
so the same conversation sent again continues from there (each request bounded in time).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import SessionError

PROGRESS_EVERY_S = 5.0
"""Seconds between progress lines of one ingestion."""


class IngestTimeout(SessionError):
    """An ingestion stopped at its time limit (the message says how far it got and what to do)."""


class IngestWatch:
    """Called with the tokens appended so far (out of ``total``) after each chunk of one ingestion."""

    def __init__(self, total: int, limit_s: float, log: Callable[[str], None], *, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.limit_s, self.log, self.every_s, self.clock = total, limit_s, log, every_s, clock
        self.start = clock()
        self._last_line = self.start
        self.lines = 0
        """Progress lines logged so far."""

    def __call__(self, done: int) -> None:
        now = self.clock()
        elapsed = now - self.start
        if done < self.total and 0 < self.limit_s < elapsed:
            raise IngestTimeout(
                f"stopped ingesting a {self.total:,}-token conversation at {self.limit_s:g} s (--mc_web_ingest_s) "
                f"with {done:,} tokens ({100 * done / self.total:.0f}%) in its history: the answer is empty; "
                f"sending the conversation again continues from there")
        if now - self._last_line >= self.every_s:
            rate = done / elapsed if elapsed > 0 else float("inf")
            left = (self.total - done) / rate if rate > 0 else float("inf")
            self.log(f"ingesting a {self.total:,}-token conversation: {done:,} tokens "
                     f"({100 * done / self.total:.0f}%) in {elapsed:.1f} s, about {left:.0f} s left")
            self._last_line = now
            self.lines += 1

    def finished(self) -> None:
        """After the last chunk: a closing line when progress was logged (a long ingestion)."""
        if self.lines:
            self.log(f"ingested a {self.total:,}-token conversation in {self.clock() - self.start:.1f} s")
