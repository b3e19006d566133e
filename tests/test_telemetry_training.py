"""Telemetry of a --mc training run: events emitted for real (JSONL and OTLP), slow or dead collectors,
the documented W&B metric set (both ways), honest MFU by hand, alerts once per crossing, W&B offline."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_plugin import SMALL, SmallHost, _data
from test_telemetry_otlp import OTEL_VARS, Collector

import megacontext_plugin.telemetry.providers as providers_mod
from megacontext_plugin.config import MCConfig
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.telemetry import (
    EVENT_SCHEMAS,
    AlertMonitor,
    JsonlTelemetryProvider,
    MCTelemetryAlert,
    OpenTelemetryProvider,
    TelemetryEvent,
    validate_event,
)
from megacontext_plugin.training import MCController
from megacontext_plugin.training.flops import gists_per_sequence
from megacontext_plugin.training.mfu import base_flops_fn, device_peak_flops, peak_flops
from megacontext_plugin.training.monitor import TrainingMonitor

DOC = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
TRAINING_EVENTS = {"mc_tree_snapshot", "working_context_snapshot", "focus_allocator", "mc_timing", "mc_batch_stats",
                   "PrefDebug"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


def run(argv: list[str], steps: int, *, peak: float | None = None) -> tuple[SmallHost, list[dict[str, float]]]:
    host = SmallHost(["--mc", *SMALL, *argv], num_iterations=max(steps, 2))
    assert host.plugin.monitor is not None
    if peak is not None:  # CPU has no peak: pretend a device so mc/mfu is reported
        host.plugin.monitor.peak_flops = peak
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCTelemetryAlert)
        logs = [host.step(s, *_data(100 + s)) for s in range(steps)]
    return host, logs


# ---- the documented metric set ------------------------------------------------------------------

def documented_metrics() -> list[str]:
    text = DOC.read_text()
    section = text.split("## W&B metrics", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(mc/[^`]+)` \|", section, flags=re.M)


def test_every_documented_metric_is_emitted_and_every_emitted_metric_documented() -> None:
    documented = documented_metrics()
    assert len(documented) >= 20 and len(set(documented)) == len(documented)
    host, logs = run(["--mc_telemetry", "none", "--mc_telemetry_every", "1"], 3, peak=1e12)
    host.close()
    emitted = {k for log in logs for k in log if k.startswith("mc/")}
    patterns = [re.compile(re.escape(m).replace(re.escape("{k}"), r"\d+") + "$") for m in documented]
    undocumented = sorted(k for k in emitted if not any(p.match(k) for p in patterns))
    never = sorted(m for m, p in zip(documented, patterns, strict=True) if not any(p.match(k) for k in emitted))
    assert not undocumented, f"emitted but not in docs/telemetry.md: {undocumented}"
    assert not never, f"documented but never emitted: {never}"
    required = {"mc/token_loss", "mc/lens_loss", "mc/time_controller_ms", "mc/variants_total", "mc/adv_delta_mean",
                "mc/adv_delta_p95", "mc/preference_corr_mean", "mc/swap_rate", "mc/residency", "mc/delta_nll_h",
                "mc/mfu", "mc/flops_per_step", "mc/tokens_processed", "mc/total_flops", "mc/wall_time_s",
                "mc/effective_steps"}
    assert required <= emitted
    assert any(re.fullmatch(r"mc/lod\d+_loss", k) for k in emitted)
    last = logs[-1]
    assert last["mc/tokens_processed"] == 3 * 2 * 128  # the host feeds 2 sequences of 128 tokens per step
    assert last["mc/effective_steps"] == 3 * last["mc/variant_rows"]
    assert 0 <= last["mc/residency"] <= 1 and 0 <= last["mc/swap_rate"] <= 1


# ---- events, JSONL and OTLP end to end ---------------------------------------------------------

def test_jsonl_run_emits_every_training_event(tmp_path: Path) -> None:
    host, logs = run(["--mc_telemetry_dir", str(tmp_path), "--mc_telemetry_every", "2"], 4)
    monitor = host.plugin.monitor
    assert monitor is not None and isinstance(monitor.provider, JsonlTelemetryProvider)
    path = monitor.provider.path
    K = 8
    (on_policy, teacher, random), H = host.plugin.controller.cfg.variant_counts, host.plugin.controller.cfg.mc_horizon
    assert path.parent.parent == tmp_path and path.parent.name == monitor.run_id and monitor.run_id.startswith("base-")
    host.close()  # closes the provider: everything is written
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["name"] for r in rows} == TRAINING_EVENTS
    for r in rows:
        validate_event(TelemetryEvent(r["name"], r["attributes"], r["timestamp_ns"]))
        assert r["attributes"]["session"] == "train" and r["attributes"]["run_id"] == monitor.run_id
    assert {r["attributes"]["step"] for r in rows} == {0, 2}  # the cadence
    by = {name: [r["attributes"] for r in rows if r["name"] == name] for name in TRAINING_EVENTS}
    tree = by["mc_tree_snapshot"][0]
    assert tree["tokens_total"] == 128 and tree["nodes_per_level"] == [128 // K**lv for lv in range(tree["num_levels"])]
    wcs = [a for a in by["working_context_snapshot"] if a["step"] == 0]
    assert [a["layout"] for a in wcs] == (["baseline"] + ["on-policy"] * on_policy + ["teacher"] * teacher
                                          + ["random"] * random + ["recency", "refocused"])
    for a in wcs:
        assert sum(a["level_histogram"]) == a["wc_entries"] <= a["w_max"]
    assert all(a["wc_tokens"] == 128 for a in wcs[1:-2])  # the variants tile the sequence
    assert all(a["wc_tokens"] == 128 - H for a in wcs[-2:])  # the probe tiles the prompt, before the horizon
    focus = by["focus_allocator"][0]
    assert focus["edits"] == focus["expands"] + focus["collapses"] and 0 <= focus["residency"] <= 1
    assert focus["budget"] == logs[0]["mc/wc_budget"] and -1 <= focus["score_min"] <= focus["score_max"] <= 1
    timing = by["mc_timing"][0]
    assert {"build_ms", "positional_ms", "lens_ms", "losses_ms", "step_ms", "telemetry_ms"} <= set(timing)
    assert timing["losses_ms"] > 0 and timing["dropped_events"] == 0

    # the alerts' debugging aids: one of each per cadence step, matching what the step logged
    stats, prefs = by["mc_batch_stats"], by["PrefDebug"]
    assert [a["step"] for a in stats] == [a["step"] for a in prefs] == [0, 2]
    first = stats[0]
    B = first["sequences"]
    assert first["variants_total"] == logs[0]["mc/variants_total"] == B * random
    assert first["rows_total"] == logs[0]["mc/variant_rows"] == B * (1 + on_policy + teacher + random)
    assert (first["baseline_rows"], first["onpolicy_rows"], first["teacher_rows"], first["random_rows"]) == (
        B, B * on_policy, B * teacher, B * random)
    assert first["wc_budget"] == logs[0]["mc/wc_budget"] and first["sequence_tokens"] == 128
    assert first["token_loss"] == pytest.approx(logs[0]["mc/token_loss"], rel=1e-5)
    assert first["lod_losses"][0] == pytest.approx(logs[0]["mc/lod0_loss"], rel=1e-5)
    pref = prefs[0]
    n = on_policy + teacher + random  # LensNet ranks every pair of non-baseline variants
    assert pref["pairs"] <= B * n * (n - 1) // 2 and pref["pairs_kept"] == logs[0]["mc/pairs_kept"] <= pref["pairs"]
    if pref["pairs"]:
        assert pref["adv_min"] <= pref["adv_mean"] <= pref["adv_max"] and pref["adv_abs_p95"] >= 0
        assert pref["margin_min"] <= pref["margin_mean"] <= pref["margin_max"]
    assert not {"text", "prompt", "completion", "tokens", "token_ids"} & (set(first) | set(pref))


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def test_otlp_run_exports_the_events_to_a_collector(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_OTEL_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    host, _ = run(["--mc_telemetry", "otlp", "--mc_telemetry_every", "1"], 2)
    monitor = host.plugin.monitor
    assert isinstance(monitor.provider, OpenTelemetryProvider)  # a real OTLPSpanExporter, http/protobuf
    assert monitor.provider.flush(timeout_s=10)
    events = monitor.events
    host.close()
    spans = collector.spans()
    assert len(spans) == events and monitor.provider.dropped == 0
    assert {name for name, _, _ in spans} == TRAINING_EVENTS
    assert {service for _, _, service in spans} == {"megacontext-train"}
    for name, attrs, _ in spans:
        assert set(EVENT_SCHEMAS[name].required) <= set(attrs)
        assert attrs["session"] == "train" and attrs["step"] in (0, 1)
    timing = [a for n, a, _ in spans if n == "mc_timing"]
    assert len(timing) == 2 and all(a["build_ms"] > 0 and a["lens_ms"] > 0 for a in timing)
    focus = [a for n, a, _ in spans if n == "focus_allocator"]
    assert all(isinstance(a["swap_rate"], float) and 0 <= a["residency"] <= 1 for a in focus)


@pytest.fixture
def dead_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def hanging_port() -> Iterator[int]:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)  # accepts, never answers
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("kind", ["dead", "hanging"])
def test_a_dead_or_hanging_collector_never_stops_training(kind: str, request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    port = request.getfixturevalue(f"{kind}_port")
    queue = 8
    monkeypatch.setenv("MC_OTEL_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(queue))
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(queue))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    host, logs = run(["--mc_telemetry", "otlp", "--mc_telemetry_every", "1"], 20)
    monitor = host.plugin.monitor
    assert len(logs) == 20 and all(math.isfinite(log["mc/token_loss"]) for log in logs)  # the run completed
    assert monitor.events >= 20 * (host.plugin.controller.cfg.num_variants + 5)  # every step emitted
    # the bounded queue took at most itself plus the batch stuck in export; the rest was dropped and counted
    assert monitor.provider.dropped >= monitor.events - 2 * queue
    assert logs[-1]["mc/telemetry_dropped"] >= logs[-1 - 5]["mc/telemetry_dropped"] > 0  # reported, growing
    monitor.close(timeout_s=0.2)  # bounded although the export may still hang
    host.close()


def test_missing_otlp_packages_fall_back_to_jsonl_in_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setattr(providers_mod, "_warned_missing_otlp", False)
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    with pytest.warns(RuntimeWarning, match="falling back to JSONL"):
        host, logs = run(["--mc_telemetry", "otlp", "--mc_telemetry_dir", str(tmp_path)], 1)
    assert isinstance(host.plugin.monitor.provider, JsonlTelemetryProvider)
    assert math.isfinite(logs[0]["mc/token_loss"])
    host.close()


def test_plaintext_otlp_without_opt_in_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MC_OTEL_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exc:
        SmallHost(["--mc", *SMALL, "--mc_telemetry", "otlp"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "MC_OTEL_INSECURE=1" in err and err.count("\n") == 1


def test_telemetry_never_changes_training() -> None:
    probed, a = run(["--mc_telemetry", "jsonl", "--mc_telemetry_every", "1"], 3)
    probed.close()
    off, b = run(["--mc_telemetry_every", "0"], 3)
    off.close()
    for key in ("mc/token_loss", "mc/lens_loss", "mc/delta_nll_h"):
        assert [log[key] for log in a] == [log[key] for log in b]
    assert "mc/swap_rate" not in b[-1] and "mc/swap_rate" in a[-1]


# ---- MFU and FLOPs by hand ---------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_mfu_and_flops_per_step_by_hand() -> None:
    cfg = MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=8, gistnet_heads=2, gistnet_layers=1,
                   lensnet_dim=32, lensnet_heads=2, lensnet_layers=1)
    T, B, D, L = 128, 2, 64, 1
    model = TinyGPT(TinyGPTConfig(vocab_size=64, sequence_len=T, n_layer=L, n_head=4, n_embd=D))
    ctrl = MCController(cfg, dim=D, head_dim=16, sequence_len=T, total_steps=3)
    clock, peak = FakeClock(), 1e9
    mon = TrainingMonitor(ctrl, model.flops_per_token, every=0, peak_flops=peak, clock=clock)
    # by hand: 6 x matmul parameters (qkv, proj, fc, fc_out per layer; lm_head) + 12 L D context
    params = L * (3 * D * D + D * D + 4 * D * D + 4 * D * D) + 64 * D

    def step_flops(W: int) -> int:
        V, H = cfg.num_variants, cfg.mc_horizon
        base = B * V * W * (6 * params + 12 * L * D * W)
        gist = 3 * ctrl.gistnet.flops_per_gist() * B * (T // 8 + T // 64)
        lens = 4 * ctrl.lensnet.flops(W, H, B * (V - 1))  # fwd + bwd of the random rows, + the KL anchor
        # the on-policy variant's scoring: one forward of B prompts per allocator round, (levels - 1) refocus
        # calls of --allocator_iterations rounds (3 levels at T = 128, K = 8); no teacher pass (no nll_fn)
        lens += 2 * cfg.allocator_iterations * ctrl.lensnet.flops(W - H, H, B)
        return base + gist + lens

    assert gists_per_sequence(T, 8) == T // 8 + T // 64
    expected, dts = [], [0.5, 2.0, 1.0]
    for step, dt in enumerate(dts):
        for micro in range(2):  # two micro-batches (gradient accumulation) per optimizer step
            x, y = _data(step * 2 + micro)  # [B, T]
            batch = ctrl.process_batch(x, y, model.wte, step)
            mon.on_batch(step, x, model.wte, batch)
        clock.t += dt
        mon.after_step(step, {})
        expected.append(2 * step_flops(ctrl.budget_at(step)))
    out = mon.metrics()
    assert out["mc/flops_per_step"] == expected[-1]
    assert out["mc/total_flops"] == sum(expected)
    rates = sorted(f / dt for f, dt in zip(expected, dts, strict=True))
    assert out["mc/mfu"] == pytest.approx(100 * rates[1] / peak)  # median of the per-step rates
    assert out["mc/tokens_processed"] == 3 * 2 * B * T and out["mc/wall_time_s"] == pytest.approx(sum(dts))
    assert "mc/mfu" not in mon.metrics()  # no step since the last report
    ctrl.close()


def test_peak_flops_table_and_nanochat_flops_per_token() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA GeForce RTX 5090") == 209.5e12
    assert math.isinf(peak_flops("Some Future GPU")) and math.isinf(device_peak_flops("cpu"))

    class NanochatLike(torch.nn.Module):  # nanochat's estimate_flops at sequence_len, sliding windows
        config = TinyGPTConfig(n_layer=3, n_head=4, n_embd=64, sequence_len=256)
        window_sizes = ((64, 0), (-1, 0), (128, 0))

        def estimate_flops(self) -> int:
            return 6 * 1000 + sum(12 * 4 * 16 * (256 if w < 0 else min(w, 256)) for w, _ in self.window_sizes)

    f = base_flops_fn(NanochatLike())
    assert f(256) == NanochatLike().estimate_flops()
    assert f(100) == 6000 + 12 * 4 * 16 * (64 + 100 + 100)


# ---- alerts ------------------------------------------------------------------------------------

def test_alerts_warn_once_per_crossing() -> None:
    alerts = AlertMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, ms in enumerate([50, 250, 300, 260, 100, 90, 201, 205]):
            alerts.observe("mc/time_controller_ms", ms, step)
        for step in range(10):  # smoothed: a sustained ΔNLL@H above 0.15
            alerts.observe("mc/delta_nll_h", 0.5, step)
        alerts.observe("mc/residency", 0.95, 0)
    msgs = [str(w.message) for w in caught if issubclass(w.category, MCTelemetryAlert)]
    assert len(msgs) == 3, msgs
    assert [(m, s) for m, s, _ in alerts.fired] == [("mc/time_controller_ms", 1), ("mc/time_controller_ms", 6),
                                                   ("mc/delta_nll_h", 2)]
    assert "200" in msgs[0] and "0.15" in msgs[2]


def test_an_untrained_lensnet_warns_of_nothing_in_the_first_phase() -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none", "--mc_telemetry_every", "1"], num_iterations=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(3):  # a probe on every step: swap rate 0 each time (no edits yet)
            host.step(s, *_data(200 + s))
    assert [w for w in caught if issubclass(w.category, MCTelemetryAlert)] == []
    monitor = host.plugin.monitor
    assert monitor.errors == 0 and monitor.alerts.warmup_steps == 10
    assert monitor.alerts.fired == []
    host.close()


# ---- W&B offline -------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install wandb)")
def test_wandb_offline_logs_the_step_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    host, logs = run(["--mc_telemetry", "none", "--mc_telemetry_every", "1"], 2)
    host.close()
    wb = wandb.init(project="megacontext-test", mode="offline", dir=str(tmp_path), config={"mc": True})
    for step, log in enumerate(logs):
        wb.log({"step": step, **log})
    summary = dict(wb.summary)
    wb.finish()
    assert summary["mc/token_loss"] == pytest.approx(logs[-1]["mc/token_loss"])
    assert list(tmp_path.rglob("*.wandb"))  # the offline run file exists


def test_run_provider_per_stage_accepts_inference_update(collector: Collector, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from megacontext_plugin.telemetry import make_run_provider

    update = {"tokens_generated": 12, "refocused": True, "prompt_tokens": 5000, "context_tokens": 5012,
              "kv_reused_tokens": 900, "refocus_interval": 32, "latency_ms": 3.5, "tokens_per_s": 41.0,
              "step": 12, "session": "inference"}  # what the Engine's session emits on a refocus
    jsonl, run_id, where = make_run_provider("jsonl", "chat", telemetry_dir=tmp_path)
    assert where == str(tmp_path / run_id / "telemetry.jsonl") and run_id.startswith("chat-")
    jsonl.emit(TelemetryEvent("inference_update", update))
    jsonl.close()
    assert json.loads(Path(where).read_text())["attributes"] == update
    monkeypatch.setenv("MC_OTEL_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("MC_OTEL_INSECURE", "1")
    otlp, _, where = make_run_provider("otlp", "chat")
    assert "megacontext-chat" in where
    otlp.emit(TelemetryEvent("inference_update", update))
    assert otlp.flush(timeout_s=10)
    otlp.close()
    [(name, attrs, service)] = collector.spans()
    assert (name, service, attrs) == ("inference_update", "megacontext-chat", update)
    none, _, where = make_run_provider("none", "base")
    none.emit(TelemetryEvent("inference_update", update))  # validated, then dropped on purpose
    assert "nowhere" in where


def test_peak_flops_asks_the_host_inside_nanochat(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    host = types.ModuleType("nanochat.common")
    host.get_peak_flops = lambda name: 123e12 if name == "Host GPU" else float("inf")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nanochat", types.ModuleType("nanochat"))
    monkeypatch.setitem(sys.modules, "nanochat.common", host)
    assert peak_flops("Host GPU") == 123e12  # the host's table, not ours
