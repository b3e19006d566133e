"""Closing a telemetry sink at process exit without waiting on it twice.

A provider with buffered events (JSONL, OTLP batches) must be closed when the host's script
ends, and the host never tells the plugin it ends: ``atexit`` does. A sink closed earlier (a new
stage in the same process, ``MegaContextPlugin.reset``) unregisters itself, so an exiting
process never closes it again nor keeps it alive.
"""

from __future__ import annotations

import atexit
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class ClosedAtExit:
    """Owns ``sink`` until ``close``: closed then, or at process exit, whichever comes first.

    The sink's own ``close`` must be bounded (providers never wait on a hanging collector)."""

    def __init__(self, sink: Closable) -> None:
        self.sink = sink
        self._close = sink.close
        atexit.register(self._close)

    def close(self) -> None:
        self._close()
        atexit.unregister(self._close)
