"""Wall-clock phases of the controller's work, under the keys telemetry and the benchmarks read.

``Timings.phase("build")`` times its block into ``ms["build_ms"]``. The keys and what each one
covers are the ``mc_timing`` attributes (``telemetry.events``, ``training.monitor.TIMING_KEYS``);
a phase nested in another counts in both (``controller_ms`` is the whole ``process_batch``).
Host timers without device synchronisation: on an accelerator a phase is the host's time to
issue its work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """Milliseconds per phase in ``ms``, a plain dict (``MCBatch.timings_ms``). The dict is kept by
    reference, so a later phase (``losses_ms``, timed by ``compute_losses``) lands in the dict the
    batch already carries and telemetry holds."""

    def __init__(self, ms: dict[str, float] | None = None) -> None:
        self.ms: dict[str, float] = {} if ms is None else ms

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``ms[f"{name}_ms"]``; a block that raises records nothing."""
        t0 = time.perf_counter()
        yield
        self.ms[f"{name}_ms"] = (time.perf_counter() - t0) * 1e3
