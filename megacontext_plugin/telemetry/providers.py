"""Telemetry providers: no-op, JSONL file (offline default) and OpenTelemetry over OTLP.

All providers share one contract (:class:`TelemetryProvider`): ``emit`` validates the event on
the caller's thread (schema + privacy rule) and then never blocks: events go to a bounded queue
drained by a background thread, and an event that finds the queue full is dropped and counted in
``dropped``. A slow or dead backend therefore never slows or stops training.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from megacontext_plugin.private_files import make_private_dirs, private_binary_file
from megacontext_plugin.telemetry.events import TelemetryEvent, event_to_json_dict, validate_event

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

ProviderKind = Literal["none", "jsonl", "otlp"]
PROVIDER_KINDS: tuple[str, ...] = ("none", "jsonl", "otlp")
OtlpProtocol = Literal["http/protobuf", "grpc"]
OTLP_PROTOCOLS: tuple[str, ...] = ("http/protobuf", "grpc")

JSONL_FILENAME = "telemetry.jsonl"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
TRACES_PATH = "/v1/traces"
_TRUE = frozenset({"1", "true", "yes", "on"})


class TelemetryConfigError(ValueError):
    """A provider was asked for something it cannot do (unknown kind, plaintext endpoint, ...)."""


class TelemetryUnavailableError(ImportError):
    """The OpenTelemetry SDK or OTLP exporter packages are not importable."""


@runtime_checkable
class TelemetryProvider(Protocol):
    """Where telemetry events go. ``emit`` never blocks; events it cannot queue are counted."""

    @property
    def dropped(self) -> int:
        """Events accepted by ``emit`` that will not reach the backend (queue full, closed, failed)."""
        ...

    def emit(self, event: TelemetryEvent) -> None: ...

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait up to ``timeout_s`` for queued events to be written; True if all were."""
        ...

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout_s`` and release resources; idempotent."""
        ...


class NoOpTelemetryProvider:
    """Discards every event (after validating it, so schema bugs surface even with telemetry off)."""

    def __init__(self, *, allow_content: bool = False) -> None:
        self.allow_content = allow_content

    @property
    def dropped(self) -> int:
        return 0

    def emit(self, event: TelemetryEvent) -> None:
        validate_event(event, allow_content=self.allow_content)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        return None


_STOP = object()


class JsonlTelemetryProvider:
    """One JSON object per line in ``path``, rotated by size, written by a background thread.

    Rotation follows :class:`logging.handlers.RotatingFileHandler`: when a line would push the
    file past ``max_bytes`` it becomes ``path.1`` (``path.1`` becomes ``path.2`` ...; at most
    ``backups`` old files are kept; with ``backups=0`` the file is truncated instead).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 3,
        *,
        queue_size: int = 10_000,
        allow_content: bool = False,
    ) -> None:
        if max_bytes <= 0:
            raise TelemetryConfigError(f"max_bytes must be positive, got {max_bytes}")
        if backups < 0:
            raise TelemetryConfigError(f"backups must be >= 0, got {backups}")
        if queue_size <= 0:
            raise TelemetryConfigError(f"queue_size must be positive, got {queue_size}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.allow_content = allow_content
        make_private_dirs(self.path.parent)  # owner-only: with allow_content an event may carry text
        self._fh = private_binary_file(self.path, "ab")
        self._size = self._fh.tell()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._dropped = 0
        self._submitted = 0
        self._processed = 0
        self._closed = False
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mc-telemetry-jsonl", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def emit(self, event: TelemetryEvent) -> None:
        event = validate_event(event, allow_content=self.allow_content)
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self._dropped += 1
                return
            self._submitted += 1

    def flush(self, timeout_s: float = 5.0) -> bool:
        with self._done:
            target = self._submitted
            return self._done.wait_for(lambda: self._processed >= target, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return  # writer is stuck; it is a daemon thread and the file is closed at exit
        self._thread.join(timeout_s)

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[TelemetryEvent] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, TelemetryEvent)
                batch.append(item)
                if len(batch) >= 256:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            lines = [(json.dumps(event_to_json_dict(e), separators=(",", ":")) + "\n").encode() for e in batch]
            failed = 0
            try:
                self._write_batch(lines)
            except OSError as exc:  # disk full, file removed under us, ...: count, keep going
                self.last_error = exc
                failed = len(lines)
            with self._done:
                self._processed += len(batch)
                self._dropped += failed
                self._done.notify_all()
        try:
            self._fh.close()
        except OSError as exc:
            self.last_error = exc

    def _write_batch(self, lines: Sequence[bytes]) -> None:
        for line in lines:
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._size += len(line)
        self._fh.flush()

    def _rotate(self) -> None:
        self._fh.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._fh = private_binary_file(self.path, "ab")
        else:
            self._fh = private_binary_file(self.path, "wb")
        self._size = 0


# -- OpenTelemetry ---------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise TelemetryConfigError(f"{name} must be an integer, got {raw!r}") from exc


def resolve_otlp_settings(
    endpoint: str | None = None, protocol: str | None = None, insecure: bool | None = None
) -> tuple[str, OtlpProtocol, bool]:
    """Resolve (endpoint, protocol, insecure) from arguments and the environment.

    Precedence: argument, then ``MC_OTEL_ENDPOINT`` / ``MC_OTEL_INSECURE``, then the standard
    ``OTEL_EXPORTER_OTLP_TRACES_*`` and ``OTEL_EXPORTER_OTLP_*`` variables, then the OTLP defaults
    (``http://localhost:4318`` for http/protobuf, ``http://localhost:4317`` for grpc). For
    http/protobuf the returned endpoint is the full traces URL (``.../v1/traces``).

    Raises :class:`TelemetryConfigError` for an unknown protocol, or for an endpoint without TLS
    (``http://``, or a scheme-less gRPC endpoint with insecure requested) unless the user opted in
    with ``MC_OTEL_INSECURE=1`` (or ``insecure=True``).
    """
    proto = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if proto not in OTLP_PROTOCOLS:
        raise TelemetryConfigError(f"unsupported OTLP protocol {proto!r}; use one of: {', '.join(OTLP_PROTOCOLS)}")
    opted_in = insecure if insecure is not None else _env_true("MC_OTEL_INSECURE")

    full_url = False  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the signal URL, used as is
    if endpoint:
        ep = endpoint
    elif os.environ.get("MC_OTEL_ENDPOINT"):
        ep = os.environ["MC_OTEL_ENDPOINT"]
    elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        ep, full_url = os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], True
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        ep = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    else:
        ep = DEFAULT_HTTP_ENDPOINT if proto == "http/protobuf" else DEFAULT_GRPC_ENDPOINT
    ep = ep.strip()
    scheme = urlsplit(ep).scheme.lower() if "://" in ep else ""

    if proto == "http/protobuf":
        if scheme not in ("http", "https"):
            raise TelemetryConfigError(f"OTLP http/protobuf endpoint must start with http:// or https://, got {ep!r}")
        if not full_url and not ep.rstrip("/").endswith(TRACES_PATH):
            ep = ep.rstrip("/") + TRACES_PATH
        plaintext = scheme == "http"
    else:
        if scheme not in ("", "http", "https"):
            raise TelemetryConfigError(f"OTLP grpc endpoint must be host:port, http:// or https://, got {ep!r}")
        plaintext = scheme == "http" or (scheme == "" and opted_in)
    if plaintext and not opted_in:
        raise TelemetryConfigError(
            f"OTLP endpoint {ep!r} has no TLS; set MC_OTEL_INSECURE=1 (or pass insecure=True) to send "
            "telemetry unencrypted, or use an https:// endpoint"
        )
    return ep, proto, bool(opted_in)  # type: ignore[return-value]


def _load_otel(protocol: OtlpProtocol) -> tuple[Any, Any, Any, Any, Any]:
    """Import the SDK and the exporter for ``protocol`` (lazily, so they stay optional)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TelemetryUnavailableError(
            "OpenTelemetry telemetry needs the packages opentelemetry-sdk and opentelemetry-exporter-otlp "
            f"({exc}); install them with `pip install opentelemetry-sdk opentelemetry-exporter-otlp`"
        ) from exc
    return Resource, TracerProvider, BatchSpanProcessor, SpanExportResult, OTLPSpanExporter


class _CountingExporter:
    """Wraps the OTLP exporter to learn when the batch processor hands spans over, and failures."""

    def __init__(
        self,
        inner: SpanExporter,
        success: SpanExportResult,
        on_handed: Callable[[int], None],
        on_done: Callable[[int, bool], None],
    ) -> None:
        self._inner = inner
        self._success = success
        self._on_handed = on_handed
        self._on_done = on_done
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._on_handed(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:
            self._on_done(len(spans), False)
            raise
        self._on_done(len(spans), result == self._success)
        return result

    def shutdown(self) -> None:
        with self._shutdown_lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


class OpenTelemetryProvider:
    """Each event becomes a zero-length span (name = event name, attributes = event attributes).

    Spans go through the SDK's ``BatchSpanProcessor`` (bounded queue of ``max_queue_size`` spans,
    background export, exporter ``timeout``); the OTLP exporter's own bounded retry is the only
    retry. ``emit`` never blocks: when ``max_queue_size`` spans are waiting to be handed to the
    exporter, the event is dropped and counted in ``dropped``. Spans of failed exports are
    counted in ``dropped`` too (and in ``export_failed``), and so are spans that ``close`` leaves
    behind: still queued, or in an export that had not finished by its deadline.
    """

    def __init__(
        self,
        service_name: str = "megacontext",
        endpoint: str | None = None,
        protocol: OtlpProtocol | None = None,
        insecure: bool | None = None,
        *,
        max_queue_size: int | None = None,
        max_export_batch_size: int | None = None,
        schedule_delay_ms: float | None = None,
        export_timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
        allow_content: bool = False,
    ) -> None:
        self.endpoint, self.protocol, self.insecure = resolve_otlp_settings(endpoint, protocol, insecure)
        Resource, TracerProvider, BatchSpanProcessor, SpanExportResult, Exporter = _load_otel(self.protocol)
        self.allow_content = allow_content
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE") or 2048
        batch = max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or 512
        if self.max_queue_size <= 0 or batch <= 0:
            raise TelemetryConfigError("max_queue_size and max_export_batch_size must be positive")
        batch = min(batch, self.max_queue_size)

        exporter_kwargs: dict[str, Any] = {"endpoint": self.endpoint}
        if export_timeout_s is not None:
            exporter_kwargs["timeout"] = export_timeout_s
        if headers is not None:
            exporter_kwargs["headers"] = headers
        if self.protocol == "grpc" and "://" not in self.endpoint:
            exporter_kwargs["insecure"] = self.insecure
        inner = Exporter(**exporter_kwargs)

        self._lock = threading.Lock()
        self._in_flight = 0  # accepted by emit, not yet handed to the exporter
        self._exporting = 0  # handed to the exporter, export not finished
        self._settled = False  # close() has counted what was never sent: later outcomes change nothing
        self._dropped = 0
        self._export_failed = 0
        self._closed = False
        self._exporter = _CountingExporter(inner, SpanExportResult.SUCCESS, self._handed, self._done)
        self._processor = BatchSpanProcessor(
            self._exporter,  # type: ignore[arg-type]
            max_queue_size=self.max_queue_size,
            schedule_delay_millis=schedule_delay_ms,
            max_export_batch_size=batch,
            export_timeout_millis=None if export_timeout_s is None else export_timeout_s * 1000,
        )
        self.service_name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        resource = Resource.create({"service.name": self.service_name})
        self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._tracer_provider.add_span_processor(self._processor)
        self._tracer = self._tracer_provider.get_tracer("megacontext_plugin.telemetry")

    def _handed(self, n: int) -> None:
        with self._lock:
            if not self._settled:
                self._in_flight -= n
                self._exporting += n

    def _done(self, n: int, ok: bool) -> None:
        with self._lock:
            if self._settled:
                return
            self._exporting -= n
            if not ok:
                self._export_failed += n
                self._dropped += n

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    @property
    def export_failed(self) -> int:
        """Spans the exporter gave up on (after its own bounded retry); included in ``dropped``."""
        with self._lock:
            return self._export_failed

    def emit(self, event: TelemetryEvent) -> None:
        event = validate_event(event, allow_content=self.allow_content)
        with self._lock:
            if self._closed or self._in_flight >= self.max_queue_size:
                self._dropped += 1
                return
            self._in_flight += 1
        span = self._tracer.start_span(event.name, attributes=event.attributes, start_time=event.timestamp_ns)
        span.end(end_time=event.timestamp_ns)

    def flush(self, timeout_s: float = 5.0) -> bool:
        with self._lock:
            if self._closed:
                return False
        # BatchSpanProcessor.force_flush ignores its timeout, so bound the wait here.
        result: list[bool] = []
        worker = threading.Thread(
            target=lambda: result.append(bool(self._processor.force_flush())), name="mc-telemetry-flush", daemon=True
        )
        worker.start()
        worker.join(timeout_s)
        return bool(result and result[0])

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # BatchSpanProcessor.shutdown() waits up to 30 s for a stuck export; bound the wait here and,
        # past the deadline, shut the exporter down so its retry backoff stops early.
        worker = threading.Thread(target=self._processor.shutdown, name="mc-telemetry-close", daemon=True)
        worker.start()
        worker.join(max(0.0, timeout_s))
        if worker.is_alive():
            self._exporter.shutdown()
        with self._lock:  # spans still queued, or in an export that did not finish, were never sent
            self._dropped += self._in_flight + self._exporting
            self._in_flight = self._exporting = 0
            self._settled = True


# -- factory ---------------------------------------------------------------------------------

_warned_missing_otlp = False
_warn_lock = threading.Lock()


def _warn_missing_otlp_once(exc: TelemetryUnavailableError, fallback: Path) -> None:
    global _warned_missing_otlp
    with _warn_lock:
        if _warned_missing_otlp:
            return
        _warned_missing_otlp = True
    warnings.warn(f"{exc}; falling back to JSONL telemetry at {fallback}", RuntimeWarning, stacklevel=3)


def make_provider(
    kind: str,
    run_dir: str | os.PathLike[str] | None = None,
    service_name: str = "megacontext",
    *,
    allow_content: bool = False,
) -> TelemetryProvider:
    """Build the provider named by ``kind`` ("none", "jsonl" or "otlp").

    JSONL writes ``run_dir/telemetry.jsonl``. "otlp" reads its endpoint and TLS settings from the
    environment (see :func:`resolve_otlp_settings`); if the OTLP packages are missing or the
    exporter fails to start it warns once and falls back to JSONL in ``run_dir`` (a configuration
    mistake is a ``TelemetryConfigError``).
    """
    if kind not in PROVIDER_KINDS:
        raise TelemetryConfigError(f"unknown telemetry provider {kind!r}; use one of: {', '.join(PROVIDER_KINDS)}")
    if kind == "none":
        return NoOpTelemetryProvider(allow_content=allow_content)
    if run_dir is None and kind == "jsonl":
        raise TelemetryConfigError("the jsonl telemetry provider needs a run_dir")
    if kind == "otlp":
        try:
            return OpenTelemetryProvider(service_name, allow_content=allow_content)
        except TelemetryConfigError:
            raise
        except Exception as exc:  # missing packages, or an exporter that cannot start: never stop training
            if run_dir is None:
                raise
            if not isinstance(exc, TelemetryUnavailableError):
                exc = TelemetryUnavailableError(f"the OTLP exporter failed to start: {exc!r}")
            _warn_missing_otlp_once(exc, Path(run_dir) / JSONL_FILENAME)
    assert run_dir is not None
    return JsonlTelemetryProvider(Path(run_dir) / JSONL_FILENAME, allow_content=allow_content)


# -- one provider per run ---------------------------------------------------------------------

SERVICE_NAMES: dict[str, str] = {"base": "megacontext-train", "mid": "megacontext-train", "sft": "megacontext-train",
                                 "chat": "megacontext-chat"}
"""OTLP ``service.name`` per nanochat stage: training stages and inference (chat CLI, web, eval)."""


def nanochat_base_dir() -> Path:
    """nanochat's base directory: ``$NANOCHAT_BASE_DIR``, else ``~/.cache/nanochat`` (as nanochat's
    ``get_base_dir``, without importing nanochat)."""
    raw = os.environ.get("NANOCHAT_BASE_DIR", "")
    return Path(raw) if raw else Path.home() / ".cache" / "nanochat"


def default_telemetry_dir() -> Path:
    return nanochat_base_dir() / "megacontext" / "telemetry"


def new_run_id(stage: str) -> str:
    """``{stage}-{UTC yyyymmdd-hhmmss}-{pid}``: unique per process, sortable, no user content."""
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"


def make_run_provider(
    kind: str,
    stage: str,
    *,
    telemetry_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    allow_content: bool = False,
) -> tuple[TelemetryProvider, str, str]:
    """The provider of one run of a nanochat ``stage``: returns ``(provider, run_id, where)``.

    ``auto`` is ``otlp`` when ``MC_OTEL_ENDPOINT`` is set, else ``jsonl`` (``resolve_kind``).
    ``jsonl`` writes ``{telemetry_dir}/{run_id}/telemetry.jsonl`` (``telemetry_dir`` defaults to
    ``$NANOCHAT_BASE_DIR/megacontext/telemetry``; one directory per run, rotated by size).
    ``otlp`` exports to the collector configured by ``MC_OTEL_ENDPOINT`` / ``OTEL_*`` with
    ``service.name`` from :data:`SERVICE_NAMES` (``megacontext-train`` or ``megacontext-chat``).
    Missing OTLP packages, or an exporter that fails to start, warn once and fall back to JSONL;
    a configuration mistake (plaintext endpoint without ``MC_OTEL_INSECURE=1``, bad protocol)
    raises :class:`TelemetryConfigError`. ``where`` says where events go, for a log line.
    """
    chosen_by_env = kind == "auto" and bool(os.environ.get("MC_OTEL_ENDPOINT"))
    kind = resolve_kind(kind)
    run_id = run_id or new_run_id(stage)
    service = SERVICE_NAMES.get(stage, "megacontext-train")
    run_dir = Path(telemetry_dir) if telemetry_dir else default_telemetry_dir()
    run_dir = run_dir / run_id
    provider = make_provider(kind, run_dir, service, allow_content=allow_content)
    if isinstance(provider, JsonlTelemetryProvider):
        where = str(provider.path)
    elif isinstance(provider, OpenTelemetryProvider):
        where = f"OTLP {provider.protocol} {provider.endpoint} (service.name {provider.service_name})"
    else:
        where = "nowhere (--mc_telemetry none)"
    if chosen_by_env:
        where += " (MC_OTEL_ENDPOINT is set; --mc_telemetry jsonl|none overrides it)"
    return provider, run_id, where


def resolve_kind(kind: str) -> str:
    """``--mc_telemetry``: ``auto`` is ``otlp`` when ``MC_OTEL_ENDPOINT`` is set (the operating guide's
    promise), else ``jsonl``; an explicit ``jsonl``, ``otlp`` or ``none`` wins."""
    if kind == "auto":
        return "otlp" if os.environ.get("MC_OTEL_ENDPOINT") else "jsonl"
    return kind
