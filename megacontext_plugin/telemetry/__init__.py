"""Telemetry: the event schema and the providers that ship events (no-op, JSONL, OTLP).

This room imports only the standard library, ``opentelemetry`` (lazily) and
``megacontext_plugin.config``. See ``docs/telemetry.md``.
"""

from megacontext_plugin.telemetry.events import (
    COMMON_ATTRIBUTES,
    CONTENT_KEYS,
    EVENT_NAMES,
    EVENT_SCHEMAS,
    FOCUS_ALLOCATOR,
    INFERENCE_UPDATE,
    MAX_LIST_LEN,
    MAX_STR_LEN,
    MC_TIMING,
    MC_TREE_SNAPSHOT,
    WORKING_CONTEXT_SNAPSHOT,
    AttributeValue,
    AttrSpec,
    EventSpec,
    TelemetryEvent,
    TelemetryValidationError,
    validate_event,
)
from megacontext_plugin.telemetry.providers import (
    PROVIDER_KINDS,
    JsonlTelemetryProvider,
    NoOpTelemetryProvider,
    OpenTelemetryProvider,
    TelemetryConfigError,
    TelemetryProvider,
    TelemetryUnavailableError,
    make_provider,
    resolve_otlp_settings,
)

__all__ = [
    "COMMON_ATTRIBUTES",
    "CONTENT_KEYS",
    "EVENT_NAMES",
    "EVENT_SCHEMAS",
    "FOCUS_ALLOCATOR",
    "INFERENCE_UPDATE",
    "MAX_LIST_LEN",
    "MAX_STR_LEN",
    "MC_TIMING",
    "MC_TREE_SNAPSHOT",
    "PROVIDER_KINDS",
    "WORKING_CONTEXT_SNAPSHOT",
    "AttrSpec",
    "AttributeValue",
    "EventSpec",
    "JsonlTelemetryProvider",
    "NoOpTelemetryProvider",
    "OpenTelemetryProvider",
    "TelemetryConfigError",
    "TelemetryEvent",
    "TelemetryProvider",
    "TelemetryUnavailableError",
    "TelemetryValidationError",
    "make_provider",
    "resolve_otlp_settings",
    "validate_event",
]
