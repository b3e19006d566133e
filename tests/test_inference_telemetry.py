"""A chat session's shape events (mc_tree_snapshot, working_context_snapshot, focus_allocator):
emitted when it refocuses (each prompt ends with one), rate-limited by --mc_inference_telemetry_every,
valid against the schema, with no text or token ids, written by the chat stage's provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from inference_support import FakeEngine, T, build, prompt

from megacontext_plugin.inference import InferenceRuntime
from megacontext_plugin.inference.chat import ChatRuntime
from megacontext_plugin.telemetry import (
    CONTENT_KEYS,
    FOCUS_ALLOCATOR,
    MC_TREE_SNAPSHOT,
    WORKING_CONTEXT_SNAPSHOT,
    TelemetryEvent,
    validate_event,
)

SHAPES = (MC_TREE_SNAPSHOT, WORKING_CONTEXT_SNAPSHOT, FOCUS_ALLOCATOR)


def chat(every: int, tokens: int = 40) -> tuple[InferenceRuntime, list[tuple[str, dict[str, Any]]], list[int]]:
    model, controller, _ = build(["--mc_inference_telemetry_every", str(every)])
    runtime = InferenceRuntime(controller.nets)
    seen: list[tuple[str, dict[str, Any]]] = []
    runtime.snapshot_listeners.append(lambda name, attrs: seen.append((name, attrs)))
    text = prompt(10 * T)
    stream = runtime.generate(FakeEngine(model), text, max_tokens=tokens, temperature=0.0)
    assert stream is not None
    out = [column[0] for column, _ in stream]
    return runtime, seen, text + out


def test_every_refocus_emits_the_three_shape_events_without_content() -> None:
    runtime, seen, history = chat(1)
    session = runtime.last_session
    assert session is not None
    refocuses = session.stats.refocuses
    assert refocuses >= 2 and len(seen) == 3 * refocuses
    assert [name for name, _ in seen] == list(SHAPES) * refocuses
    for name, attrs in seen:
        validate_event(TelemetryEvent(name, attrs))  # the schema, and the privacy rule: no content keys
        assert not set(attrs) & set(CONTENT_KEYS) and attrs["session"] == "inference"
        assert not any(isinstance(v, list) and v == history[:len(v)] for v in attrs.values())
    trees = [a for n, a in seen if n == MC_TREE_SNAPSHOT]
    assert trees[0]["tokens_total"] == 10 * T and trees[-1]["tokens_total"] <= session.num_tokens
    assert sum(t["append_tokens"] for t in trees) == trees[-1]["tokens_total"]  # every append, once
    assert trees[-1]["nodes_per_level"][0] == trees[-1]["tokens_total"]
    wcs = [a for n, a in seen if n == WORKING_CONTEXT_SNAPSHOT]
    assert all(sum(a["level_histogram"]) == a["wc_entries"] <= a["w_max"] == runtime.budget for a in wcs)
    assert wcs[-1]["wc_entries"] == len(session.wc) and wcs[-1]["wc_tokens"] == session.wc.num_tokens
    focus = [a for n, a in seen if n == FOCUS_ALLOCATOR]
    assert sum(a["expands"] for a in focus) == session.stats.expands
    assert sum(a["collapses"] for a in focus) == session.stats.collapses + session.stats.forced_collapses
    assert all(0 <= a["swap_rate"] <= 1 and 0 <= a["residency"] <= 1 for a in focus)
    assert wcs[0]["wc_tokens"] == 10 * T and wcs[0]["wc_entries"] < runtime.budget  # ten windows of prompt, tiled
    runtime.close()


@pytest.mark.parametrize("every", [0, 2])
def test_the_knob_rate_limits_the_shape_events(every: int) -> None:
    runtime, seen, _ = chat(every)
    refocuses = runtime.last_session.stats.refocuses
    expected = 0 if every == 0 else -(-refocuses // every)  # refocuses 0, every, 2 * every, ...
    assert len(seen) == 3 * expected and refocuses >= 3
    runtime.close()


def test_the_chat_stage_writes_them_beside_inference_update(tmp_path: Path) -> None:
    model, controller, _ = build(["--mc_telemetry", "jsonl", "--mc_telemetry_dir", str(tmp_path)])
    chat_rt = ChatRuntime(controller.nets, model)
    stream = chat_rt.generate(FakeEngine(model), prompt(4 * T), max_tokens=24, temperature=0.0)
    assert stream is not None
    list(stream)
    chat_rt.close()
    files = list(tmp_path.glob("chat-*/telemetry.jsonl"))
    assert len(files) == 1
    names = [json.loads(line)["name"] for line in files[0].read_text().splitlines()]
    assert set(names) == {"inference_update", *SHAPES}
    assert names.count(MC_TREE_SNAPSHOT) == names.count("inference_update")  # the default: every refocus
