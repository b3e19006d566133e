"""Event schema and privacy validator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megacontext_plugin.telemetry import (
    COMMON_ATTRIBUTES,
    EVENT_NAMES,
    EVENT_SCHEMAS,
    MAX_LIST_LEN,
    MAX_STR_LEN,
    NoOpTelemetryProvider,
    TelemetryEvent,
    TelemetryValidationError,
    validate_event,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"


def timing(**extra: object) -> TelemetryEvent:
    attrs: dict = {"build_ms": 1.5, "positional_ms": 2, "lens_ms": 0.25, **extra}
    return TelemetryEvent("mc_timing", attrs)


def test_documented_event_names() -> None:
    assert set(EVENT_NAMES) == {
        "mc_tree_snapshot",
        "working_context_snapshot",
        "focus_allocator",
        "mc_timing",
        "inference_update",
        "mc_batch_stats",
        "PrefDebug",
    }
    mc_timing = EVENT_SCHEMAS["mc_timing"]
    assert {"build_ms", "positional_ms", "lens_ms", "packing_ms", "losses_ms", "layouts_ms", "controller_ms"} <= set(
        mc_timing.allowed
    )
    assert {"expands", "collapses", "swap_rate", "residency"} <= set(EVENT_SCHEMAS["focus_allocator"].required)


def test_valid_event_is_normalized() -> None:
    ev = validate_event(timing(step=3, session="train"))
    assert ev.attributes["positional_ms"] == 2.0 and isinstance(ev.attributes["positional_ms"], float)
    tree = validate_event(
        TelemetryEvent("mc_tree_snapshot", {"tokens_total": 10, "num_levels": 2, "nodes_per_level": (8, 2)})
    )
    assert tree.attributes["nodes_per_level"] == [8, 2]
    assert ev.timestamp_ns > 0


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (TelemetryEvent("nope", {}), "unknown telemetry event"),
        (TelemetryEvent("mc_timing", {"build_ms": 1.0}), "missing required"),
        (timing(bogus=1), "not part of event"),
        (timing(step=1.5), "must be int"),
        (timing(step=True), "must be int"),
        (timing(lens_ms="fast"), None),
        (timing(controller_ms=float("nan")), "finite"),
        (TelemetryEvent("inference_update", {"tokens_generated": 1, "refocused": 1}), "must be bool"),
        (TelemetryEvent("mc_timing", {"build_ms": 1.0, "positional_ms": 1.0, "lens_ms": 1.0}, -1), "timestamp_ns"),
    ],
)
def test_schema_errors(event: TelemetryEvent, message: str | None) -> None:
    with pytest.raises(TelemetryValidationError, match=message):
        validate_event(event)


@pytest.mark.parametrize("key", ["text", "token_ids", "tokens", "prompt", "completion"])
def test_content_keys_need_opt_in(key: str) -> None:
    value: object = "hello" if key in ("text", "prompt", "completion") else [1, 2, 3]
    with pytest.raises(TelemetryValidationError, match="allow_content=True"):
        validate_event(timing(**{key: value}))
    assert validate_event(timing(**{key: value}), allow_content=True).attributes[key] == value


def test_long_strings_and_lists_need_opt_in() -> None:
    long_str = "x" * (MAX_STR_LEN + 1)
    with pytest.raises(TelemetryValidationError, match="raw text"):
        validate_event(timing(session=long_str))
    assert validate_event(timing(session="x" * MAX_STR_LEN)).attributes["session"] == "x" * MAX_STR_LEN
    long_list = list(range(MAX_LIST_LEN + 1))
    tree = {"tokens_total": 10, "num_levels": 2}
    with pytest.raises(TelemetryValidationError, match="token ids"):
        validate_event(TelemetryEvent("mc_tree_snapshot", {**tree, "nodes_per_level": long_list}))
    ok = validate_event(TelemetryEvent("mc_tree_snapshot", {**tree, "nodes_per_level": long_list}), allow_content=True)
    assert ok.attributes["nodes_per_level"] == long_list


def test_noop_provider_validates() -> None:
    p = NoOpTelemetryProvider()
    p.emit(timing())
    with pytest.raises(TelemetryValidationError):
        p.emit(timing(text="secret"))
    assert p.flush() and p.dropped == 0
    p.close()


def test_every_event_and_attribute_is_documented() -> None:
    doc = DOC.read_text()
    for name, spec in EVENT_SCHEMAS.items():
        assert re.search(rf"`{name}`", doc), name
        for key in [*spec.required, *spec.optional]:
            assert f"`{key}`" in doc, f"{name}.{key} undocumented"
    for key in COMMON_ATTRIBUTES:
        assert f"`{key}`" in doc
    for var in ("MC_OTEL_ENDPOINT", "MC_OTEL_INSECURE", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        assert var in doc
