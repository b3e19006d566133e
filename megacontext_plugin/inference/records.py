"""What a session records about itself: counters, one record per refocus, and the
``inference_update`` telemetry payload built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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




def inference_update(record: RefocusRecord, *, prompt_tokens: int, context_tokens: int, refocus_every: int,
                     elapsed_s: float) -> dict[str, Any]:
    """The telemetry schema's ``inference_update`` payload of one refocus, ``elapsed_s`` into the turn."""
    payload: dict[str, Any] = {
        "tokens_generated": record.step,
        "refocused": True,
        "prompt_tokens": prompt_tokens,
        "context_tokens": context_tokens,
        "kv_reused_tokens": record.first_changed,
        "refocus_interval": refocus_every,
        "latency_ms": record.total_ms,
        "step": record.step,
        "session": "inference",
    }
    if record.step and elapsed_s > 0:
        payload["tokens_per_s"] = record.step / elapsed_s
    return payload
