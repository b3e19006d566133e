"""The telemetry event schema as code, and the privacy validator.

Every event the MegaContext controller emits is a :class:`TelemetryEvent` whose ``name`` is one
of :data:`EVENT_SCHEMAS` and whose attributes are declared there (type, unit, required or
optional). ``docs/telemetry.md`` is generated from the same table in spirit and a test checks
that every event and attribute here is documented there.

Privacy rule: events carry shapes, spans, levels, scores and timings, never raw text or token
ids. :func:`validate_event` rejects the content keys (:data:`CONTENT_KEYS`), strings longer than
:data:`MAX_STR_LEN` and lists longer than :data:`MAX_LIST_LEN` unless the caller opted in with
``allow_content=True``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Literal, TypeAlias

AttributeValue: TypeAlias = int | float | str | bool | list[int] | list[float]
AttrType: TypeAlias = Literal["int", "float", "str", "bool", "list[int]", "list[float]"]

#: Longest string attribute accepted without ``allow_content`` (labels such as a phase name).
MAX_STR_LEN = 64
#: Longest list attribute accepted without ``allow_content`` (per-level counts, histograms).
MAX_LIST_LEN = 64

#: Keys that carry user content; accepted only with ``allow_content=True``.
CONTENT_KEYS: frozenset[str] = frozenset({"text", "token_ids", "tokens", "prompt", "completion"})

MC_TREE_SNAPSHOT = "mc_tree_snapshot"
WORKING_CONTEXT_SNAPSHOT = "working_context_snapshot"
FOCUS_ALLOCATOR = "focus_allocator"
MC_TIMING = "mc_timing"
INFERENCE_UPDATE = "inference_update"
MC_BATCH_STATS = "mc_batch_stats"
PREF_DEBUG = "PrefDebug"


class TelemetryValidationError(ValueError):
    """An event does not match the schema or would leak content without the opt-in."""


@dataclasses.dataclass(frozen=True)
class AttrSpec:
    """One attribute of an event: its type, unit and meaning."""

    type: AttrType
    unit: str
    description: str


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """One event: what it means and which attributes it requires / allows."""

    name: str
    description: str
    required: Mapping[str, AttrSpec]
    optional: Mapping[str, AttrSpec]

    def spec_for(self, key: str) -> AttrSpec | None:
        if key in self.required:
            return self.required[key]
        if key in self.optional:
            return self.optional[key]
        return COMMON_ATTRIBUTES.get(key)

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.required) | frozenset(self.optional) | frozenset(COMMON_ATTRIBUTES)


def _attr(type_: AttrType, unit: str, description: str) -> AttrSpec:
    return AttrSpec(type_, unit, description)


#: Optional on every event.
COMMON_ATTRIBUTES: Mapping[str, AttrSpec] = {
    "step": _attr("int", "steps", "optimizer step (training) or decode step (inference)"),
    "session": _attr("str", "label", "where the event comes from: train, eval or inference"),
    "run_id": _attr("str", "label", "run identifier"),
    "rank": _attr("int", "index", "distributed rank of the emitting process"),
}

EVENT_SCHEMAS: Mapping[str, EventSpec] = {
    MC_TREE_SNAPSHOT: EventSpec(
        MC_TREE_SNAPSHOT,
        "Shape of the MegaContext tree after ingest.",
        required={
            "tokens_total": _attr("int", "tokens", "tokens ingested into the tree (LOD0 length)"),
            "num_levels": _attr("int", "levels", "number of levels of detail in the tree"),
            "nodes_per_level": _attr("list[int]", "nodes", "node count per level, LOD0 first"),
        },
        optional={
            "block_size": _attr("int", "tokens", "children per gist (compression factor per level)"),
            "tree_bytes": _attr("int", "bytes", "storage used by all tree levels"),
            "append_tokens": _attr("int", "tokens", "tokens appended since the previous snapshot"),
            "trees": _attr("int", "count", "trees in this snapshot (training: one per sequence of the micro-batch)"),
        },
    ),
    WORKING_CONTEXT_SNAPSHOT: EventSpec(
        WORKING_CONTEXT_SNAPSHOT,
        "Shape of the working context (WC) fed to the base model.",
        required={
            "wc_entries": _attr("int", "entries", "entries (tokens or gists) in the WC"),
            "wc_tokens": _attr("int", "tokens", "tokens covered by the WC entries"),
            "w_max": _attr("int", "entries", "WC capacity"),
        },
        optional={
            "level_histogram": _attr("list[int]", "entries", "WC entries per level of detail, LOD0 first"),
            "span_start": _attr("int", "token position", "first covered token position"),
            "span_end": _attr("int", "token position", "one past the last covered token position"),
            "recent_tokens": _attr("int", "tokens", "tail of the sequence kept at LOD0"),
            "variant_index": _attr("int", "index", "WC variant index within the batch (0 = baseline)"),
            "layout": _attr("str", "label",
                            "baseline, on-policy, teacher or random (training variants), recency or refocused (probe)"),
            "padding": _attr("int", "entries", "padding entries after the last real one (training rows have w_max)"),
        },
    ),
    FOCUS_ALLOCATOR: EventSpec(
        FOCUS_ALLOCATOR,
        "One focus-allocator pass (expand/collapse decisions).",
        required={
            "expands": _attr("int", "count", "entries expanded to a finer level"),
            "collapses": _attr("int", "count", "entries collapsed to a coarser level"),
            "swap_rate": _attr("float", "fraction 0-1",
                               "(expands + block_size x collapses) / WC entries before the pass"),
            "residency": _attr("float", "fraction 0-1",
                               "share of the WC entries before the pass still present after it"),
        },
        optional={
            "budget": _attr("int", "entries", "WC budget the allocator respected"),
            "wc_entries": _attr("int", "entries", "WC entries after the pass"),
            "iterations": _attr("int", "count", "allocator iterations run"),
            "score_mean": _attr("float", "score", "mean LensNet focus score"),
            "score_p95": _attr("float", "score", "95th percentile LensNet focus score"),
            "allocator_ms": _attr("float", "ms", "wall time of the pass"),
            "edits": _attr("int", "count", "expands + collapses"),
            "candidates": _attr("int", "count", "entries past the thresholds, before cooldown and budget"),
            "wc_entries_before": _attr("int", "entries", "WC entries before the pass"),
            "utilisation": _attr("float", "fraction 0-1", "WC entries after the pass / budget"),
            "score_std": _attr("float", "score", "standard deviation of the LensNet focus scores"),
            "score_min": _attr("float", "score", "lowest LensNet focus score"),
            "score_max": _attr("float", "score", "highest LensNet focus score"),
        },
    ),
    MC_TIMING: EventSpec(
        MC_TIMING,
        "Per-batch controller timings.",
        required={
            "build_ms": _attr("float", "ms", "tree build / ingest"),
            "positional_ms": _attr("float", "ms", "positional encoding of WC entries"),
            "lens_ms": _attr("float", "ms", "LensNet forward"),
        },
        optional={
            "packing_ms": _attr("float", "ms", "packing WC variants into the batch"),
            "losses_ms": _attr("float", "ms", "MC auxiliary losses"),
            "layouts_ms": _attr("float", "ms", "WC layout sampling"),
            "teacher_ms": _attr("float", "ms", "the teacher's full-context pass (input-gradient saliency)"),
            "guided_ms": _attr("float", "ms", "guided layouts: teacher pass, on-policy and teacher refocusing, index"),
            "controller_ms": _attr("float", "ms", "whole controller step (sum of the above and glue)"),
            "step_ms": _attr("float", "ms", "wall time of the whole training step (between optimizer steps)"),
            "telemetry_ms": _attr("float", "ms", "time telemetry itself spent in this step (probe, events, counters)"),
            "dropped_events": _attr("int", "count", "telemetry events dropped so far by the provider"),
        },
    ),
    INFERENCE_UPDATE: EventSpec(
        INFERENCE_UPDATE,
        "One inference step of the Engine with MC on.",
        required={
            "tokens_generated": _attr("int", "tokens", "tokens generated so far in this turn"),
            "refocused": _attr("bool", "flag", "whether the WC was refocused at this step"),
        },
        optional={
            "prompt_tokens": _attr("int", "tokens", "tokens in the prompt / conversation so far"),
            "context_tokens": _attr("int", "tokens", "tokens covered by the WC"),
            "kv_reused_tokens": _attr("int", "tokens", "KV-cache prefix reused after refocus"),
            "refocus_interval": _attr("int", "tokens", "K: tokens between refocus passes"),
            "tokens_per_s": _attr("float", "tokens/s", "decode throughput"),
            "latency_ms": _attr("float", "ms", "latency of this step"),
        },
    ),
    MC_BATCH_STATS: EventSpec(
        MC_BATCH_STATS,
        "What one training micro-batch trained: its variant rows per kind and its losses.",
        required={
            "variants_total": _attr("int", "rows", "random variant rows of the micro-batch (sequences x random "
                                    "variants per sequence; mc/variants_total)"),
            "sequences": _attr("int", "count", "sequences in the micro-batch"),
        },
        optional={
            "rows_total": _attr("int", "rows", "variant rows of every kind (sequences x variants per sequence)"),
            "baseline_rows": _attr("int", "rows", "recency-baseline rows (one per sequence)"),
            "onpolicy_rows": _attr("int", "rows", "on-policy rows (the allocator refocusing with the current LensNet)"),
            "teacher_rows": _attr("int", "rows", "teacher-guided rows (saliency of the full-context pass)"),
            "random_rows": _attr("int", "rows", "random rows (exploration)"),
            "duplicate_rows": _attr("int", "rows", "rows that repeat another variant of the same sequence"),
            "wc_budget": _attr("int", "entries", "working-context entries per variant at this step (the curriculum)"),
            "sequence_tokens": _attr("int", "tokens", "tokens per sequence (T)"),
            "token_loss": _attr("float", "nats", "mean NLL over every supervised entry of all variants"),
            "lod_losses": _attr("list[float]", "nats", "the same per level of detail, LOD0 first (it stops before the "
                                "first level with no supervised entry)"),
            "gist_loss": _attr("float", "nats", "tail NLL of the random variants minus the baseline's"),
            "delta_nll_h": _attr("float", "nats", "ΔNLL@H of this micro-batch (mc/delta_nll_h)"),
            "lens_loss": _attr("float", "nats", "LensNet's disagreement with the ΔNLL ranking (mc/lens_loss)"),
            "lens_total": _attr("float", "nats", "the whole LensNet training loss, unweighted (mc/lens_total)"),
            "tail_supervised_frac": _attr("float", "fraction 0-1", "sequences whose tail has a supervised target"),
            "controller_ms": _attr("float", "ms", "controller time of the micro-batch (process_batch + losses)"),
        },
    ),
    PREF_DEBUG: EventSpec(
        PREF_DEBUG,
        "LensNet's preference pairs of one micro-batch, summarised: the true advantages and LensNet's margins.",
        required={
            "pairs": _attr("int", "count", "preference pairs with a supervised tail"),
            "pairs_kept": _attr("int", "count", "pairs kept by the hard-negative filter (trained on)"),
        },
        optional={
            "adv_mean": _attr("float", "nats", "mean advantage dnll_j - dnll_i (> 0: variant i is better)"),
            "adv_std": _attr("float", "nats", "its standard deviation"),
            "adv_abs_p95": _attr("float", "nats", "95th percentile of |advantage|"),
            "adv_min": _attr("float", "nats", "lowest advantage"),
            "adv_max": _attr("float", "nats", "highest advantage"),
            "adv_scale": _attr("float", "nats", "the advantage normaliser (square root of the EMA of adv²)"),
            "margin_mean": _attr("float", "score", "mean LensNet margin for 'i is better'"),
            "margin_std": _attr("float", "score", "its standard deviation"),
            "margin_min": _attr("float", "score", "lowest margin"),
            "margin_max": _attr("float", "score", "highest margin"),
            "agreement": _attr("float", "fraction 0-1", "pairs with a non-zero advantage where the margin's sign "
                               "agrees with it (0.5 = chance)"),
            "corr": _attr("float", "correlation", "Pearson correlation of margin with -advantage "
                          "(mc/preference_corr_mean; near -1 is right)"),
        },
    ),
}

EVENT_NAMES: tuple[str, ...] = tuple(EVENT_SCHEMAS)


def _now_ns() -> int:
    return time.time_ns()


@dataclasses.dataclass(frozen=True)
class TelemetryEvent:
    """One structured telemetry event.

    ``timestamp_ns`` is wall-clock nanoseconds since the epoch (``time.time_ns()``).
    """

    name: str
    attributes: dict[str, AttributeValue] = dataclasses.field(default_factory=dict)
    timestamp_ns: int = dataclasses.field(default_factory=_now_ns)


def _check_scalar(key: str, want: AttrType, value: object) -> int | float | str | bool:
    if want == "bool":
        if isinstance(value, bool):
            return value
    elif want == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif want == "str" and isinstance(value, str):
        return value
    raise TelemetryValidationError(f"attribute {key!r} must be {want}, got {type(value).__name__}")


def _normalize(key: str, spec: AttrSpec, value: object) -> AttributeValue:
    if spec.type.startswith("list["):
        if not isinstance(value, list | tuple):
            raise TelemetryValidationError(f"attribute {key!r} must be {spec.type}, got {type(value).__name__}")
        elem: AttrType = "int" if spec.type == "list[int]" else "float"
        items = [_check_scalar(key, elem, v) for v in value]
        if elem == "int":
            return [int(v) for v in items]
        return [float(v) for v in items]
    return _check_scalar(key, spec.type, value)


_CONTENT_SPECS: Mapping[str, AttrSpec] = {
    "text": _attr("str", "text", "raw text (opt-in only)"),
    "prompt": _attr("str", "text", "raw prompt text (opt-in only)"),
    "completion": _attr("str", "text", "raw completion text (opt-in only)"),
    "token_ids": _attr("list[int]", "token ids", "raw token ids (opt-in only)"),
    "tokens": _attr("list[int]", "token ids", "raw token ids (opt-in only)"),
}


def validate_event(event: TelemetryEvent, *, allow_content: bool = False) -> TelemetryEvent:
    """Check ``event`` against :data:`EVENT_SCHEMAS` and the privacy rule.

    Returns an equivalent event with normalized attribute values (ints in float fields become
    floats, tuples become lists). Raises :class:`TelemetryValidationError` on an unknown event,
    a missing required or unknown attribute, a wrong type, or content without the opt-in.
    """
    spec = EVENT_SCHEMAS.get(event.name)
    if spec is None:
        raise TelemetryValidationError(f"unknown telemetry event {event.name!r}; known: {', '.join(EVENT_NAMES)}")
    if not isinstance(event.timestamp_ns, int) or isinstance(event.timestamp_ns, bool) or event.timestamp_ns < 0:
        raise TelemetryValidationError("timestamp_ns must be a non-negative int (nanoseconds since the epoch)")
    missing = sorted(k for k in spec.required if k not in event.attributes)
    if missing:
        raise TelemetryValidationError(f"event {event.name!r} is missing required attributes: {', '.join(missing)}")
    out: dict[str, AttributeValue] = {}
    for key, value in event.attributes.items():
        if key in CONTENT_KEYS:
            if not allow_content:
                raise TelemetryValidationError(
                    f"attribute {key!r} carries raw content (text or token ids); "
                    "telemetry refuses it unless the provider was created with allow_content=True"
                )
            attr_spec: AttrSpec | None = _CONTENT_SPECS[key]
        else:
            attr_spec = spec.spec_for(key)
        if attr_spec is None:
            raise TelemetryValidationError(
                f"attribute {key!r} is not part of event {event.name!r}; allowed: {', '.join(sorted(spec.allowed))}"
            )
        norm = _normalize(key, attr_spec, value)
        if not allow_content:
            if isinstance(norm, str) and len(norm) > MAX_STR_LEN:
                raise TelemetryValidationError(
                    f"attribute {key!r} is a string of {len(norm)} chars (> {MAX_STR_LEN}); this looks like raw "
                    "text, which needs allow_content=True"
                )
            if isinstance(norm, list) and len(norm) > MAX_LIST_LEN:
                raise TelemetryValidationError(
                    f"attribute {key!r} is a list of {len(norm)} items (> {MAX_LIST_LEN}); this looks like token "
                    "ids, which need allow_content=True"
                )
        if isinstance(norm, float) and not math.isfinite(norm):
            raise TelemetryValidationError(f"attribute {key!r} must be finite, got {norm!r}")
        if isinstance(norm, list) and any(isinstance(v, float) and not math.isfinite(v) for v in norm):
            raise TelemetryValidationError(f"attribute {key!r} must contain finite numbers only")
        out[key] = norm
    return TelemetryEvent(event.name, out, event.timestamp_ns)


def event_to_json_dict(event: TelemetryEvent) -> dict[str, object]:
    """The JSONL representation of one event (one object per line)."""
    return {"name": event.name, "timestamp_ns": event.timestamp_ns, "attributes": dict(event.attributes)}
