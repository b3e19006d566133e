"""What ``chat_cli --mc`` prints after each answer: its latency and, when MegaContext decoded it, the
level map of the working context the answer was generated from.

::

    megacontext: 3214-token prompt over MegaContext: first token 0.84 s, 31 tokens at 12.5 tokens/s
    megacontext: level map: 3245 tokens in 230/256 entries | L0: 190 raw (190 tok), L1: 40 gists (3055 tok)
                 [1111111111111111111111111111111111111111111111111111111111.....]

The first token's latency runs from the moment the Engine asks for the answer (the ``generate``
hook) to the first token: it covers ingesting the prompt (tree, gists, refocus, prefill) or
upstream's prefill. Tokens per second is the decode rate after that first token. A prompt that
fits the window is decoded by upstream's Engine (``upstream decode``) and has no level map.

Only the interactive CLI prints this (:func:`host_is_chat_cli`): ``chat_web`` and ``chat_eval`` go
through the same hook and stay quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

PREFIX = "megacontext: "
Column = TypeVar("Column")


def host_is_chat_cli() -> bool:
    """Whether this process runs nanochat's ``scripts.chat_cli`` (``python -m scripts.chat_cli`` or the
    file itself): the hook contract names the stage ``chat`` for every chat script alike."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else Path(getattr(main, "__file__", "") or "").stem
    return name.rsplit(".", 1)[-1] == "chat_cli"


@dataclass(frozen=True)
class Latency:
    """One answer's timing (seconds from the ``generate`` hook's call)."""

    prompt_tokens: int
    tokens: int
    """Token columns the stream yielded (one token each with ``num_samples=1``)."""
    first_token_s: float | None
    """None: the stream yielded nothing."""
    total_s: float
    megacontext: bool
    """True: decoded over MegaContext; False: upstream's Engine decoded it."""

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate after the first token; None with fewer than two tokens."""
        if self.first_token_s is None or self.tokens < 2 or self.total_s <= self.first_token_s:
            return None
        return (self.tokens - 1) / (self.total_s - self.first_token_s)


def format_latency(lat: Latency) -> str:
    how = "over MegaContext" if lat.megacontext else "upstream decode"
    if lat.first_token_s is None:
        return f"{PREFIX}{lat.prompt_tokens}-token prompt, {how}: no tokens in {lat.total_s:.2f} s"
    rate = lat.tokens_per_s
    speed = f" at {rate:.1f} tokens/s" if rate is not None else ""
    return (f"{PREFIX}{lat.prompt_tokens}-token prompt, {how}: first token {lat.first_token_s:.2f} s, "
            f"{lat.tokens} token{'s' if lat.tokens != 1 else ''}{speed}")


def format_level_map(rendered: str) -> str:
    """``render_level_map``'s two lines under a ``level map:`` label, the bar aligned below the summary."""
    head, *rest = rendered.splitlines()
    label = f"{PREFIX}level map: "
    return "\n".join([label + head, *(" " * len(label) + line for line in rest)])


def answer_report(lat: Latency, level_map: str | None) -> str:
    """The lines printed after an answer (``level_map``: ``render_level_map()`` text, or None)."""
    lines = [format_latency(lat)]
    if level_map:
        lines.append(format_level_map(level_map))
    return "\n".join(lines)


def timed(stream: Iterator[Column], prompt_tokens: int, megacontext: bool, start: float,
          done: Callable[[Latency], None], clock: Callable[[], float] = time.perf_counter) -> Iterator[Column]:
    """``stream`` unchanged, timed; ``done(latency)`` once it is exhausted (not when the consumer stops
    early: an answer cut short has no honest rate)."""
    first: float | None = None
    count = 0
    for column in stream:
        if first is None:
            first = clock() - start
        count += 1
        yield column
    done(Latency(prompt_tokens, count, first, clock() - start, megacontext))
