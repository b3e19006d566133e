"""The operating guide's alerts (section 4): per alert, a synthetic stream that must fire it and the
stream of a real tiny run (the plugin's hooks around a TinyGPT learning a Markov chain) that must
not, warm-up included; whole one-line messages that name the event to inspect."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from test_plugin import SMALL, SmallHost, T
from test_telemetry_training import FakeClock

from megacontext_plugin.telemetry import ALERT_RULES, AlertMonitor, MCTelemetryAlert, alert_message
from megacontext_plugin.telemetry.alerts import alert_warmup_steps
from megacontext_plugin.training.mfu import base_flops_fn
from megacontext_plugin.training.monitor import TrainingMonitor

DOC = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
REGIME = "new budget"
STEPS = 80


class RecordingAlerts(AlertMonitor):
    """The alert monitor of a run, keeping every observation (and budget change) it is fed."""

    def __init__(self, warmup_steps: int) -> None:
        super().__init__(warmup_steps=warmup_steps)
        self.stream: list[tuple[str, float, int]] = []

    def observe(self, metric: str, value: float, step: int) -> bool:
        self.stream.append((metric, value, step))
        return super().observe(metric, value, step)

    def new_regime(self) -> None:
        self.stream.append((REGIME, math.nan, -1))
        super().new_regime()


def markov_batch(seed: int, successors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of a random Markov chain with two successors per token: learnable, so the run's
    loss falls as a healthy run's does."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, T + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, 64, (2,), generator=g)
    pick = torch.randint(0, 2, (2, T + 1), generator=g)
    for t in range(1, T + 1):
        x[:, t] = successors[x[:, t - 1], pick[:, t]]
    return x[:, :-1], x[:, 1:]


@pytest.fixture(scope="module")
def healthy() -> tuple[RecordingAlerts, list[dict[str, float]]]:
    """A real tiny --mc run (telemetry and probe every step) and what its alerts were fed."""
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none", "--mc_telemetry_every", "1"], num_iterations=STEPS)
    monitor = host.plugin.monitor
    assert monitor is not None and monitor.alerts.warmup_steps == alert_warmup_steps(0, STEPS) == 10
    monitor.alerts = RecordingAlerts(monitor.alerts.warmup_steps)
    host.opt = torch.optim.AdamW(host.model.parameters(), lr=3e-3)
    successors = torch.randint(0, 64, (64, 2), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCTelemetryAlert)
        logs = [host.step(s, *markov_batch(1000 + s, successors)) for s in range(STEPS)]
    host.close()
    return monitor.alerts, logs


def replay(stream: list[tuple[str, float, int]], metric: str, warmup: int) -> AlertMonitor:
    alerts = AlertMonitor(enabled=False, warmup_steps=warmup)
    for name, value, step in stream:
        if name == REGIME:
            alerts.new_regime()
        elif name == metric:
            alerts.observe(name, value, step)
    return alerts


# every alert: (values from the end of the warm-up on, words its message must hold)
FIRING: dict[str, tuple[list[float], str]] = {
    "mc/delta_nll_h": ([0.3] * 5, "> 0.15"),
    "mc/swap_rate": ([0.4] * 5, "> 0.25"),
    "mc/residency": ([0.5] * 5, "< 0.8"),
    "mc/mfu": ([30.0] * 5, "< 40"),
    "mc/token_loss": ([2.0 + 0.05 * i for i in range(12)], "rising"),
    "mc/variants_total": ([4.0, 4.0, 4.0, 0.0], "dropped to 0"),
    "mc/adv_delta_mean": ([0.2] * 8, "> 0.05"),
    "mc/adv_delta_p95": ([0.1 * i for i in range(12)], "rising"),
    "mc/preference_corr_mean": ([-0.9] * 10 + [0.3] * 15, "back above -0.1"),
    "mc/lens_loss": ([0.5] * 8, "> 0.1"),
    "mc/time_controller_ms": ([50.0, 250.0], "> 200"),
    "mc/heartbeat_s": ([10.0, 1000.0], "> 900"),
}
# the guide's second conditions, each on its own
SECOND: dict[str, tuple[list[float], str]] = {
    "mc/delta_nll_h": ([0.014 * i for i in range(11)], "rising"),
    "mc/swap_rate": ([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], "oscillating between 0 and 1"),
}
GPU_ONLY = {"mc/mfu"}
"""Absent on CPU: the run has no device peak (its own test below sets one)."""
TIMED = {"mc/time_controller_ms"}
"""Wall time of this shared CPU, not a property of the run: its healthy stream is synthetic."""


def fire(metric: str, values: list[float], warmup: int = 10) -> list[str]:
    alerts = AlertMonitor(warmup_steps=warmup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, value in enumerate(values):
            alerts.observe(metric, value, warmup + i)
    return [str(w.message) for w in caught if issubclass(w.category, MCTelemetryAlert)]


def test_every_rule_has_a_firing_stream_and_a_row_in_the_docs() -> None:
    assert {r.metric for r in ALERT_RULES} == set(FIRING)
    section = DOC.read_text().split("## Alerts", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `mc/")}
    for rule in ALERT_RULES:
        row = rows.get(f"`{rule.metric}`")
        assert row is not None, f"{rule.metric} has no row under Alerts in docs/telemetry.md"
        assert rule.inspect in row and all(c.label.split(" (")[0] in row for c in rule.conditions), row


@pytest.mark.parametrize("metric", sorted(FIRING))
def test_alert_fires_on_its_synthetic_stream(metric: str) -> None:
    values, words = FIRING[metric]
    msgs = fire(metric, values)
    assert len(msgs) == 1 and words in msgs[0], msgs
    rule = next(r for r in ALERT_RULES if r.metric == metric)
    assert f"inspect {rule.inspect}." in msgs[0]


@pytest.mark.parametrize("metric", sorted(SECOND))
def test_the_guides_second_condition_fires_alone(metric: str) -> None:
    values, words = SECOND[metric]
    msgs = fire(metric, values)
    assert len(msgs) == 1 and words in msgs[0], msgs


@pytest.mark.parametrize("metric", sorted(FIRING))
def test_alert_stays_quiet_on_a_healthy_run(metric: str, healthy: tuple[RecordingAlerts, list[dict[str, float]]]
                                            ) -> None:
    recorded, _ = healthy
    warmup = recorded.warmup_steps
    if metric in GPU_ONLY | TIMED:  # a healthy stream of the guide's targets
        values = [50.0, 47.0, 53.0, 45.0, 55.0] if metric in GPU_ONLY else [40.0, 35.0, 60.0, 120.0, 45.0]
        assert fire(metric, values, warmup) == []
        return
    seen = [(v, s) for m, v, s in recorded.stream if m == metric and s >= warmup]
    assert len(seen) >= 2, f"the run never fed {metric} after its warm-up"
    assert replay(recorded.stream, metric, warmup).fired == []


def test_the_healthy_run_learns_and_warns_of_nothing(healthy: tuple[RecordingAlerts, list[dict[str, float]]]) -> None:
    recorded, logs = healthy
    assert [m for m, _, _ in recorded.fired if m not in TIMED] == []
    assert logs[-1]["mc/token_loss"] < logs[0]["mc/token_loss"] - 1.0  # it learns
    assert any(m == REGIME for m, _, _ in recorded.stream)  # the budget annealed: drift restarts
    # the guide's variants_total: random variants x sequences; the other kinds have their own names
    random = SmallHost(["--mc", *SMALL]).plugin.controller.cfg.variant_counts[2]
    last = logs[-1]
    assert last["mc/variants_total"] == 2 * random
    assert last["mc/variant_rows"] == last["mc/variants_total"] + last["mc/variants_baseline"] + \
        last["mc/variants_onpolicy"] + last["mc/variants_teacher"]


def test_nothing_fires_during_the_warm_up() -> None:
    for metric, (values, _) in FIRING.items():
        rule = next(r for r in ALERT_RULES if r.metric == metric)
        alerts = AlertMonitor(enabled=False, warmup_steps=len(values) + 1)
        for i, value in enumerate(values):
            alerts.observe(metric, value, i)
        assert (alerts.fired == []) == rule.warmup, metric


def test_messages_are_one_whole_line_naming_the_event() -> None:
    for rule in ALERT_RULES:
        for cond in rule.conditions:
            msg = alert_message(rule, cond, 0.123456, 12345)
            assert "\n" not in msg and msg.endswith(".") and len(msg) <= 200, msg
            assert rule.metric in msg and cond.label in msg and f"inspect {rule.inspect}." in msg


def test_alert_state_survives_a_resume() -> None:
    a = AlertMonitor(enabled=False)
    for i, v in enumerate([-0.9] * 10):
        a.observe("mc/preference_corr_mean", v, i)
    b = AlertMonitor(enabled=False)
    b.load_state_dict(a.state_dict())
    for i in range(15):
        b.observe("mc/preference_corr_mean", 0.3, 10 + i)
    assert [m for m, _, _ in b.fired] == ["mc/preference_corr_mean"]  # it remembers having been aligned


def test_mfu_and_heartbeat_alerts_read_the_monitors_own_clock() -> None:
    host = SmallHost(["--mc", *SMALL, "--mc_telemetry", "none", "--mc_telemetry_every", "0"], num_iterations=4)
    clock = FakeClock()
    monitor = TrainingMonitor(host.plugin.controller, base_flops_fn(host.model), every=0, clock=clock,
                              alerts=AlertMonitor(enabled=False))
    x, _ = markov_batch(1, torch.randint(0, 64, (64, 2), generator=torch.Generator().manual_seed(0)))
    for step in range(3):
        monitor.on_batch(step, x, host.model.wte, None)
        clock.t += 1.0
        monitor.after_step(step, {})
        monitor.peak_flops = monitor.last_step_flops / 0.3  # 30% of the pretend device's peak
        metrics = monitor.metrics(step)
        assert metrics["mc/mfu"] == pytest.approx(30.0)
    clock.t += 1000.0  # the host logged nothing for 1000 s
    monitor.metrics(3)
    assert [m for m, _, _ in monitor.alerts.fired] == ["mc/mfu", "mc/heartbeat_s"]
    host.close()
