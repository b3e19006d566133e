"""The operating guide's alerts (section 4, "Telemetry Targets & Alerts"), raised as Python
warnings once per crossing.

One :class:`AlertRule` per row of the guide's table (and its controller-latency gauge): the
signal, how it is smoothed, the conditions that mean "investigate", the telemetry event to look
at and what to check. ``docs/telemetry.md`` (section *Alerts*) lists them.

:class:`AlertMonitor` keeps one :class:`SignalState` per signal. Observations before
``warmup_steps`` are ignored altogether (not smoothed either): the curriculum's first phase, when
LensNet is untrained and the budget at its widest. A warning (:class:`MCTelemetryAlert`, a
``UserWarning``) is issued when a signal goes from fine (or unobserved) to alerting, and nothing
more until it is fine again; that is logged at INFO level on the ``megacontext_plugin.telemetry``
logger. So a run that stays outside a band warns once, not every step.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

logger = logging.getLogger("megacontext_plugin.telemetry")

HISTORY = 16
"""Observations a signal remembers (for drift and oscillation)."""


class MCTelemetryAlert(UserWarning):
    """A MegaContext training signal crossed one of the operating guide's alert thresholds."""


@dataclass
class SignalState:
    """What an alert remembers of one signal: its EMA and recent history."""

    n: int = 0
    ema: float = math.nan
    raw: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    smoothed: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    """Smoothed values since the last regime change (a new curriculum budget)."""
    best: float = math.inf
    """Lowest smoothed value so far."""
    peak_raw: float = -math.inf
    """Highest raw value so far."""

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "ema": self.ema, "raw": list(self.raw), "smoothed": list(self.smoothed),
                "best": self.best, "peak_raw": self.peak_raw}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SignalState:
        return cls(int(d["n"]), float(d["ema"]), deque(d["raw"], maxlen=HISTORY),
                   deque(d["smoothed"], maxlen=HISTORY), float(d["best"]), float(d["peak_raw"]))


class Condition(Protocol):
    label: str

    def holds(self, s: SignalState, value: float) -> bool: ...


@dataclass(frozen=True)
class Above:
    """The (smoothed) value is above ``limit``."""

    limit: float

    @property
    def label(self) -> str:
        return f"> {self.limit:g}"

    def holds(self, s: SignalState, value: float) -> bool:
        return value > self.limit


@dataclass(frozen=True)
class Below:
    """The (smoothed) value is below ``limit``."""

    limit: float

    @property
    def label(self) -> str:
        return f"< {self.limit:g}"

    def holds(self, s: SignalState, value: float) -> bool:
        return value < self.limit


@dataclass(frozen=True)
class Rising:
    """Monotonic drift: the smoothed value rose at each of the last ``window - 1`` observations of
    the current budget, by ``min_rise`` in all."""

    window: int
    min_rise: float

    @property
    def label(self) -> str:
        return f"rising for {self.window} checks (+{self.min_rise:g} or more)"

    def holds(self, s: SignalState, value: float) -> bool:
        last = list(s.smoothed)[-self.window:]
        return (len(last) == self.window and all(b > a for a, b in pairwise(last))
                and last[-1] - last[0] >= self.min_rise)


@dataclass(frozen=True)
class Oscillating:
    """The raw value jumps between near 0 and near 1: ``jumps`` alternating swings of ``swing`` or
    more within the last ``window`` observations."""

    window: int
    jumps: int
    swing: float = 0.5

    @property
    def label(self) -> str:
        return "oscillating between 0 and 1"

    def holds(self, s: SignalState, value: float) -> bool:
        last = list(s.raw)[-self.window:]
        steps = [b - a for a, b in pairwise(last) if abs(b - a) >= self.swing]
        alternating = sum(1 for a, b in pairwise(steps) if a * b < 0)
        return len(steps) >= self.jumps and alternating >= self.jumps - 1


@dataclass(frozen=True)
class DropsToZero:
    """The raw value is 0 (or less) after having been positive."""

    label: str = "dropped to 0"

    def holds(self, s: SignalState, value: float) -> bool:
        return s.raw[-1] <= 0 < s.peak_raw


@dataclass(frozen=True)
class Regresses:
    """The smoothed value had reached ``aligned`` (or lower) and is back above ``back``."""

    aligned: float
    back: float

    @property
    def label(self) -> str:
        return f"back above {self.back:g} after reaching {self.aligned:g}"

    def holds(self, s: SignalState, value: float) -> bool:
        return s.best <= self.aligned and value > self.back


@dataclass(frozen=True)
class AlertRule:
    metric: str
    conditions: tuple[Condition, ...]
    inspect: str
    """The telemetry event (or report) to look at."""
    advice: str
    """What the guide says it indicates, a short clause."""
    beta: float | None = None
    """EMA factor of the smoothing; None: every raw observation counts."""
    min_obs: int = 1
    """Observations (after the warm-up) before the rule may fire."""
    warmup: bool = True
    """Whether the monitor's warm-up applies (the controller-latency and heartbeat gauges have their own)."""


ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule("mc/delta_nll_h", (Above(0.15), Rising(8, 0.05)), "mc_batch_stats",
              "gist compression drift or a stale tokenizer", beta=0.8, min_obs=3),
    AlertRule("mc/swap_rate", (Oscillating(6, 3), Above(0.25)), "focus_allocator",
              "Lens/controller instability", beta=0.8, min_obs=3),
    AlertRule("mc/residency", (Below(0.80),), "focus_allocator",
              "the allocator collapses too aggressively; check LensNet scores and the budget", beta=0.8, min_obs=3),
    AlertRule("mc/mfu", (Below(40.0),), "mc_timing",
              "check the device batch size, accumulation steps and host I/O stalls", beta=0.8, min_obs=2),
    AlertRule("mc/token_loss", (Rising(8, 0.05),), "mc_batch_stats",
              "revisit working-context sampling or loss weights", beta=0.8, min_obs=3),
    AlertRule("mc/variants_total", (DropsToZero(),), "mc_batch_stats",
              "the controller is not sampling random variants"),
    AlertRule("mc/adv_delta_mean", (Above(0.05),), "PrefDebug",
              "random variants beat the baseline or LensNet is not improving utility", beta=0.9, min_obs=5),
    AlertRule("mc/adv_delta_p95", (Rising(8, 0.05),), "PrefDebug",
              "random variants beat the baseline or LensNet is not improving utility", beta=0.8, min_obs=3),
    AlertRule("mc/preference_corr_mean", (Regresses(-0.5, -0.1),), "PrefDebug",
              "LensNet's scores no longer align with ΔNLL", beta=0.9, min_obs=5),
    AlertRule("mc/lens_loss", (Above(0.1),), "focus_allocator",
              "LensNet disagrees with the ΔNLL ranking", beta=0.9, min_obs=5),
    AlertRule("mc/time_controller_ms", (Above(200.0),), "mc_timing",
              "the controller is slow; check the layout prefetch, GistNet/LensNet sizes and host load", warmup=False),
    AlertRule("mc/heartbeat_s", (Above(900.0),), "the training log",
              "the training loop stalled or logs too rarely for W&B's heartbeat", warmup=False),
)
"""The operating guide's alerts (training-and-operations, section 4)."""


class AlertMonitor:
    """Once-per-crossing warnings for :data:`ALERT_RULES` (see the module docstring)."""

    def __init__(self, rules: tuple[AlertRule, ...] = ALERT_RULES, *, enabled: bool = True,
                 warmup_steps: int = 0) -> None:
        self.rules = {r.metric: r for r in rules}
        self.enabled = enabled
        self.warmup_steps = warmup_steps
        """Steps whose observations rules with ``warmup`` ignore."""
        self._state: dict[str, SignalState] = {}
        self._alerting: dict[str, bool] = {}
        self.fired: list[tuple[str, int, float]] = []
        """(metric, step, value) of every warning issued, in order."""

    def observe(self, metric: str, value: float, step: int) -> bool:
        """Feed one observation; returns True when this observation issued a warning."""
        rule = self.rules.get(metric)
        if rule is None or not math.isfinite(value) or (rule.warmup and step < self.warmup_steps):
            return False
        s = self._state.setdefault(metric, SignalState())
        s.n += 1
        s.raw.append(value)
        s.peak_raw = max(s.peak_raw, value)
        if rule.beta is not None:
            s.ema = value if s.n == 1 else rule.beta * s.ema + (1 - rule.beta) * value
            value = s.ema
        s.smoothed.append(value)
        s.best = min(s.best, value)
        hit = next((c for c in rule.conditions if c.holds(s, value)), None) if s.n >= rule.min_obs else None
        was = self._alerting.get(metric, False)
        self._alerting[metric] = hit is not None
        if hit is not None and not was:
            self.fired.append((metric, step, value))
            if self.enabled:
                warnings.warn(alert_message(rule, hit, value, step), MCTelemetryAlert, stacklevel=2)
            return True
        if was and hit is None:
            logger.info("megacontext: %s is fine again at step %d (%.4g)", metric, step, value)
        return False

    def new_regime(self) -> None:
        """The curriculum changed the budget: drift is measured afresh (a smaller budget raises the
        losses by design)."""
        for s in self._state.values():
            s.smoothed.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"signals": {m: s.as_dict() for m, s in self._state.items()}, "alerting": dict(self._alerting)}

    def load_state_dict(self, state: dict) -> None:
        self._state = {m: SignalState.from_dict(d) for m, d in state.get("signals", {}).items()}
        self._alerting = dict(state.get("alerting", {}))


def alert_message(rule: AlertRule, hit: Condition, value: float, step: int) -> str:
    """One whole line: what crossed, its value, what it indicates, where to look."""
    smoothed = "smoothed " if rule.beta is not None else ""
    return (f"megacontext alert at step {step}: {rule.metric} {hit.label} ({smoothed}value {value:.4g}): "
            f"{rule.advice}; inspect {rule.inspect}.")


def alert_warmup_steps(plain_steps: int, mc_steps: int) -> int:
    """The alerts' warm-up: base_train's plain steps, then the first 10% of the MC steps (at least
    10: LensNet is untrained, the budget at its widest, the first steps compile)."""
    return plain_steps + max(10, math.ceil(0.1 * mc_steps))
