"""What chat_cli --mc prints after an answer: latency (first token, tokens/s) and the level map."""

from __future__ import annotations

import sys
import types

import pytest

from megacontext_plugin.context import WorkingContext
from megacontext_plugin.inference import render_level_map
from megacontext_plugin.inference.cli_report import (
    Latency,
    answer_report,
    format_latency,
    format_level_map,
    host_is_chat_cli,
    timed,
)


def test_latency_line_names_the_prompt_the_path_the_first_token_and_the_decode_rate() -> None:
    lat = Latency(prompt_tokens=3214, tokens=31, first_token_s=0.84, total_s=3.24, megacontext=True)
    assert lat.tokens_per_s == pytest.approx(30 / 2.4)
    assert format_latency(lat) == ("megacontext: 3214-token prompt, over MegaContext: first token 0.84 s, "
                                   "31 tokens at 12.5 tokens/s")
    short = Latency(prompt_tokens=12, tokens=1, first_token_s=0.05, total_s=0.05, megacontext=False)
    assert short.tokens_per_s is None  # one token: no decode rate to report
    assert format_latency(short) == "megacontext: 12-token prompt, upstream decode: first token 0.05 s, 1 token"
    empty = Latency(prompt_tokens=12, tokens=0, first_token_s=None, total_s=0.5, megacontext=False)
    assert format_latency(empty) == "megacontext: 12-token prompt, upstream decode: no tokens in 0.50 s"


def test_level_map_is_labelled_with_its_bar_aligned_under_the_summary() -> None:
    wc = WorkingContext.recency(1000, 100, 8, 32, max_level=2)
    rendered = render_level_map(wc, budget=100, width=32)
    text = format_level_map(rendered)
    head, bar = text.splitlines()
    assert head == "megacontext: level map: " + rendered.splitlines()[0]
    assert bar.strip() == rendered.splitlines()[1] and bar.index("[") == len("megacontext: level map: ")
    lat = Latency(1000, 4, 0.5, 1.0, True)
    assert answer_report(lat, rendered) == format_latency(lat) + "\n" + text
    assert answer_report(Latency(10, 4, 0.5, 1.0, False), None) == format_latency(Latency(10, 4, 0.5, 1.0, False))


def test_timed_passes_the_stream_through_and_reports_once_it_is_exhausted() -> None:
    ticks = iter([1.5, 2.0, 2.5, 3.0, 3.5])
    seen: list[Latency] = []
    columns = [([5], [1]), ([6], [1]), ([7], [1])]
    out = list(timed(iter(columns), prompt_tokens=40, megacontext=True, start=1.0, done=seen.append,
                     clock=lambda: next(ticks)))
    assert out == columns
    (lat,) = seen
    assert lat == Latency(prompt_tokens=40, tokens=3, first_token_s=0.5, total_s=1.0, megacontext=True)

    stopped: list[Latency] = []
    stream = timed(iter(columns), 40, True, 0.0, stopped.append, clock=lambda: 1.0)
    next(stream)
    stream.close()  # the consumer stopped early: no report (no honest rate for a cut answer)
    assert stopped == []


def test_only_the_chat_cli_script_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(spec_name: str | None, file: str = "") -> types.ModuleType:
        module = types.ModuleType("__main__")
        module.__spec__ = None if spec_name is None else types.SimpleNamespace(name=spec_name)  # type: ignore[assignment]
        module.__file__ = file
        return module

    for spec, file, expected in (("scripts.chat_cli", "", True), (None, "/x/scripts/chat_cli.py", True),
                                 ("scripts.chat_web", "", False), ("scripts.chat_eval", "", False),
                                 (None, "/x/pytest", False)):
        monkeypatch.setitem(sys.modules, "__main__", main(spec, file))
        assert host_is_chat_cli() is expected, (spec, file)
