"""JSONL provider end to end: lines written, rotation, drop counting, factory."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from megacontext_plugin.telemetry import (
    JsonlTelemetryProvider,
    NoOpTelemetryProvider,
    TelemetryConfigError,
    TelemetryEvent,
    TelemetryProvider,
    TelemetryValidationError,
    make_provider,
)


def ev(i: int) -> TelemetryEvent:
    return TelemetryEvent(
        "focus_allocator", {"expands": i, "collapses": 0, "swap_rate": 0.1, "residency": 0.95, "step": i}, 1_000 + i
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_written_one_object_per_line(tmp_path: Path) -> None:
    p = JsonlTelemetryProvider(tmp_path / "run" / "telemetry.jsonl")
    assert isinstance(p, TelemetryProvider)
    for i in range(50):
        p.emit(ev(i))
    assert p.flush(timeout_s=10)
    rows = read_lines(tmp_path / "run" / "telemetry.jsonl")
    assert [r["attributes"]["expands"] for r in rows] == list(range(50))
    assert rows[0] == {
        "name": "focus_allocator",
        "timestamp_ns": 1000,
        "attributes": {"expands": 0, "collapses": 0, "swap_rate": 0.1, "residency": 0.95, "step": 0},
    }
    p.close()
    p.close()  # idempotent
    assert p.dropped == 0
    p.emit(ev(99))  # after close: dropped, not raised
    assert p.dropped == 1


def test_invalid_event_raises_on_caller(tmp_path: Path) -> None:
    p = JsonlTelemetryProvider(tmp_path / "t.jsonl")
    with pytest.raises(TelemetryValidationError):
        p.emit(TelemetryEvent("mc_timing", {"build_ms": 1.0, "positional_ms": 1.0, "lens_ms": 1.0, "text": "hi"}))
    p.close()
    q = JsonlTelemetryProvider(tmp_path / "c.jsonl", allow_content=True)
    q.emit(TelemetryEvent("mc_timing", {"build_ms": 1.0, "positional_ms": 1.0, "lens_ms": 1.0, "text": "hi"}))
    q.close()
    assert read_lines(tmp_path / "c.jsonl")[0]["attributes"]["text"] == "hi"


def test_rotation_by_size(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    line_len = len((json.dumps({"x": 0}) + "\n").encode())  # just a scale; real lines are longer
    p = JsonlTelemetryProvider(path, max_bytes=40 * line_len, backups=2)
    for i in range(200):
        p.emit(ev(i))
    p.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["telemetry.jsonl", "telemetry.jsonl.1", "telemetry.jsonl.2"]
    for f in files:
        assert f.stat().st_size <= 40 * line_len
    # the newest events survive in order across the rotated files
    kept = read_lines(path.with_name("telemetry.jsonl.2")) + read_lines(path.with_name("telemetry.jsonl.1"))
    kept += read_lines(path)
    steps = [r["attributes"]["step"] for r in kept]
    assert steps == list(range(200 - len(steps), 200))


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    p = JsonlTelemetryProvider(path, max_bytes=500, backups=0)
    for i in range(100):
        p.emit(ev(i))
    p.close()
    assert [f.name for f in tmp_path.iterdir()] == ["t.jsonl"]
    assert path.stat().st_size <= 500
    assert read_lines(path)[-1]["attributes"]["step"] == 99


class BlockedWriter(JsonlTelemetryProvider):
    """A writer thread that blocks on its first batch until released."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _write_batch(self, lines: Sequence[bytes]) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super()._write_batch(lines)


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    p = BlockedWriter(path, queue_size=3)
    p.emit(ev(0))
    assert p.entered.wait(30)  # writer holds event 0 and is blocked
    for i in range(1, 11):
        p.emit(ev(i))  # 3 fit in the queue, 7 are dropped; none blocks
    assert p.dropped == 7
    assert not p.flush(timeout_s=0)
    p.release.set()
    assert p.flush(timeout_s=30)
    p.close()
    assert [r["attributes"]["step"] for r in read_lines(path)] == [0, 1, 2, 3]
    assert p.dropped == 7


def test_make_provider(tmp_path: Path) -> None:
    assert isinstance(make_provider("none", tmp_path, "svc"), NoOpTelemetryProvider)
    p = make_provider("jsonl", tmp_path, "svc")
    assert isinstance(p, JsonlTelemetryProvider) and p.path == tmp_path / "telemetry.jsonl"
    p.close()
    with pytest.raises(TelemetryConfigError, match="unknown telemetry provider 'kafka'"):
        make_provider("kafka", tmp_path, "svc")
    with pytest.raises(TelemetryConfigError, match="run_dir"):
        make_provider("jsonl", None, "svc")
