"""OpenTelemetry provider: OTLP http/protobuf end to end on loopback, dead and hanging backends."""

from __future__ import annotations

import gzip
import socket
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

import megacontext_plugin.telemetry.providers as providers_mod
from megacontext_plugin.telemetry import (
    JsonlTelemetryProvider,
    OpenTelemetryProvider,
    TelemetryConfigError,
    TelemetryEvent,
    TelemetryProvider,
    TelemetryValidationError,
    make_provider,
    resolve_otlp_settings,
)

OTEL_VARS = [
    "MC_OTEL_ENDPOINT",
    "MC_OTEL_INSECURE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


class Collector:
    """A tiny OTLP/HTTP traces receiver on 127.0.0.1 (random free port, own thread)."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with collector.lock:
                    collector.requests.append(req)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[str, dict[str, object], str]]:
        out = []
        with self.lock:
            for req in self.requests:
                for rs in req.resource_spans:
                    service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            out.append((s.name, {a.key: decode(a.value) for a in s.attributes}, service))
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def decode(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [decode(x) for x in v.array_value.values]
    return getattr(v, kind)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture
def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connection refused
    return port


@pytest.fixture
def hanging_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)  # the kernel accepts connections; nobody ever reads or answers
    yield s.getsockname()[1]
    s.close()


def test_http_protobuf_end_to_end(collector: Collector) -> None:
    p = OpenTelemetryProvider(
        "mc-test", endpoint=f"http://127.0.0.1:{collector.port}", insecure=True, export_timeout_s=5
    )
    assert isinstance(p, TelemetryProvider)
    assert p.endpoint == f"http://127.0.0.1:{collector.port}/v1/traces"
    p.emit(TelemetryEvent("mc_timing", {"build_ms": 1.5, "positional_ms": 2, "lens_ms": 0.5, "step": 7}))
    p.emit(
        TelemetryEvent(
            "mc_tree_snapshot",
            {"tokens_total": 4096, "num_levels": 3, "nodes_per_level": [4096, 128, 4], "session": "train"},
        )
    )
    p.emit(TelemetryEvent("inference_update", {"tokens_generated": 12, "refocused": True, "tokens_per_s": 30.5}))
    assert p.flush(timeout_s=10)
    spans = {name: (attrs, service) for name, attrs, service in collector.spans()}
    assert set(spans) == {"mc_timing", "mc_tree_snapshot", "inference_update"}
    assert spans["mc_timing"] == ({"build_ms": 1.5, "positional_ms": 2.0, "lens_ms": 0.5, "step": 7}, "mc-test")
    assert spans["mc_tree_snapshot"][0] == {
        "tokens_total": 4096,
        "num_levels": 3,
        "nodes_per_level": [4096, 128, 4],
        "session": "train",
    }
    assert spans["inference_update"][0] == {"tokens_generated": 12, "refocused": True, "tokens_per_s": 30.5}
    with pytest.raises(TelemetryValidationError):
        p.emit(TelemetryEvent("mc_timing", {"build_ms": 1, "positional_ms": 1, "lens_ms": 1, "token_ids": [1, 2]}))
    p.close(timeout_s=5)
    assert p.dropped == 0
    p.emit(TelemetryEvent("mc_timing", {"build_ms": 1, "positional_ms": 1, "lens_ms": 1}))
    assert p.dropped == 1  # after close


def test_env_configuration(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_OTEL_ENDPOINT", f"http://127.0.0.1:{collector.port}/")
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    p = make_provider("otlp", None, "megacontext-train")
    assert isinstance(p, OpenTelemetryProvider)
    p.emit(TelemetryEvent("focus_allocator", {"expands": 3, "collapses": 1, "swap_rate": 0.1, "residency": 0.9}))
    assert p.flush(timeout_s=10)
    p.close(timeout_s=5)
    [(name, attrs, service)] = collector.spans()
    assert (name, service) == ("focus_allocator", "from-env")
    assert attrs == {"expands": 3, "collapses": 1, "swap_rate": 0.1, "residency": 0.9}


@pytest.mark.parametrize("kind", ["dead", "hanging"])
def test_unreachable_backend_never_blocks_emit(
    kind: str, dead_port: int, hanging_port: int, request: pytest.FixtureRequest
) -> None:
    port = dead_port if kind == "dead" else hanging_port
    queue = 16
    p = OpenTelemetryProvider(
        "mc-test",
        endpoint=f"http://127.0.0.1:{port}",
        insecure=True,
        max_queue_size=queue,
        max_export_batch_size=queue,
        schedule_delay_ms=60_000,
        export_timeout_s=5,
    )
    for i in range(200):  # never blocks, never raises: beyond the bounded queue events are dropped
        p.emit(TelemetryEvent("mc_timing", {"build_ms": 1, "positional_ms": 1, "lens_ms": 1, "step": i}))
    # at most the queue plus the one batch the worker is stuck exporting were accepted
    assert p.dropped >= 200 - 2 * queue
    p.close(timeout_s=0.5)  # returns after its timeout although the export is still stuck
    p.close(timeout_s=0.5)
    assert p.dropped == 200  # nothing reached the collector: queued and stuck spans count as dropped at close


def test_plaintext_endpoint_requires_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TelemetryConfigError, match="MC_OTEL_INSECURE=1"):
        resolve_otlp_settings("http://collector:4318")
    with pytest.raises(TelemetryConfigError, match="MC_OTEL_INSECURE=1"):
        resolve_otlp_settings(None, "grpc")  # default http://localhost:4317
    with pytest.raises(TelemetryConfigError, match="MC_OTEL_INSECURE=1"):
        OpenTelemetryProvider("svc", endpoint="http://collector:4318")
    assert resolve_otlp_settings("https://collector:4318") == (
        "https://collector:4318/v1/traces",
        "http/protobuf",
        False,
    )
    assert resolve_otlp_settings("collector:4317", "grpc") == ("collector:4317", "grpc", False)
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    assert resolve_otlp_settings("http://c:4318/v1/traces") == ("http://c:4318/v1/traces", "http/protobuf", True)
    assert resolve_otlp_settings("collector:4317", "grpc") == ("collector:4317", "grpc", True)
    monkeypatch.delenv("MC_OTEL_INSECURE")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:4318/custom/path")
    assert resolve_otlp_settings()[0] == "https://t:4318/custom/path"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert resolve_otlp_settings()[1] == "grpc"
    with pytest.raises(TelemetryConfigError, match="unsupported OTLP protocol 'http/json'"):
        resolve_otlp_settings("https://c", "http/json")
    with pytest.raises(TelemetryConfigError, match="must start with http"):
        resolve_otlp_settings("collector:4318", "http/protobuf")


def test_grpc_provider_constructs_and_closes(dead_port: int) -> None:
    p = OpenTelemetryProvider(
        "svc", endpoint=f"http://127.0.0.1:{dead_port}", protocol="grpc", insecure=True, export_timeout_s=1
    )
    assert p.protocol == "grpc"
    p.close(timeout_s=0.5)


def test_missing_otlp_packages_warn_once_and_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setattr(providers_mod, "_warned_missing_otlp", False)
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p1 = make_provider("otlp", tmp_path / "a", "svc")
        p2 = make_provider("otlp", tmp_path / "b", "svc")
    assert isinstance(p1, JsonlTelemetryProvider) and isinstance(p2, JsonlTelemetryProvider)
    assert p1.path == tmp_path / "a" / "telemetry.jsonl"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "opentelemetry-exporter-otlp" in messages[0] and "JSONL" in messages[0]
    p1.close()
    p2.close()


def test_mc_otel_endpoint_alone_sends_to_otlp_and_an_explicit_choice_wins(monkeypatch, tmp_path) -> None:
    from megacontext_plugin.telemetry.providers import JsonlTelemetryProvider, OpenTelemetryProvider, make_run_provider

    monkeypatch.setenv("MC_OTEL_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: export fails, training goes on
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    provider, _, where = make_run_provider("auto", "base", telemetry_dir=tmp_path)
    try:
        assert isinstance(provider, OpenTelemetryProvider)
        assert "127.0.0.1:9" in where and "MC_OTEL_ENDPOINT is set" in where
    finally:
        provider.close()
    explicit, _, where = make_run_provider("jsonl", "base", telemetry_dir=tmp_path)
    assert isinstance(explicit, JsonlTelemetryProvider) and "MC_OTEL_ENDPOINT" not in where
    explicit.close()
    monkeypatch.delenv("MC_OTEL_ENDPOINT")
    default, _, _ = make_run_provider("auto", "base", telemetry_dir=tmp_path)
    assert isinstance(default, JsonlTelemetryProvider)
    default.close()
