"""Alert thresholds of the operating guide, raised as Python warnings once per crossing.

The guide's "Telemetry Targets & Alerts" table names four signals to investigate:

| signal | alert when | smoothing |
| --- | --- | --- |
| ``mc/time_controller_ms`` | above 200 ms (a spike) | none: every observation |
| ``mc/swap_rate`` | outside 0.05-0.20 | EMA over observations (beta 0.8) |
| ``mc/residency`` | below 0.80 | EMA over observations (beta 0.8) |
| ``mc/delta_nll_h`` | above 0.15 (sustained) | EMA over observations (beta 0.8) |

:class:`AlertMonitor` keeps one state per signal: a warning (:class:`MCTelemetryAlert`, a
``UserWarning``) is issued when a signal goes from inside its band (or unobserved) to outside
it, and nothing more until it has come back inside; coming back is logged at INFO level on the
``megacontext_plugin.telemetry`` logger. So a run that sits outside a band warns once, not
every step.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

logger = logging.getLogger("megacontext_plugin.telemetry")


class MCTelemetryAlert(UserWarning):
    """A MegaContext training signal crossed one of the operating guide's alert thresholds."""


@dataclass(frozen=True)
class AlertRule:
    metric: str
    low: float | None
    high: float | None
    smooth: bool
    advice: str

    def band(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        if self.low is not None:
            return f">= {self.low:g}"
        return f"<= {self.high:g}"

    def outside(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)


ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule("mc/time_controller_ms", None, 200.0, False,
              "the controller is slow: check the layout prefetch, GistNet/LensNet sizes and host load"),
    AlertRule("mc/swap_rate", 0.05, 0.20, True,
              "Lens/allocator instability (expected while LensNet is untrained: it makes no edits yet)"),
    AlertRule("mc/residency", 0.80, None, True,
              "the allocator collapses too aggressively: check LensNet scores and the budget"),
    AlertRule("mc/delta_nll_h", None, 0.15, True,
              "gists lose information the tail needs (gist compression drift)"),
)
"""The operating guide's thresholds (training-and-operations, section 4)."""

EMA_BETA = 0.8


class AlertMonitor:
    """Once-per-crossing warnings for :data:`ALERT_RULES` (see the module docstring)."""

    def __init__(self, rules: tuple[AlertRule, ...] = ALERT_RULES, *, enabled: bool = True) -> None:
        self.rules = {r.metric: r for r in rules}
        self.enabled = enabled
        self._ema: dict[str, float] = {}
        self._alerting: dict[str, bool] = {}
        self.fired: list[tuple[str, int, float]] = []
        """(metric, step, value) of every warning issued, in order."""

    def observe(self, metric: str, value: float, step: int) -> bool:
        """Feed one observation; returns True when this observation issued a warning."""
        rule = self.rules.get(metric)
        if rule is None or not math.isfinite(value):
            return False
        if rule.smooth:
            prev = self._ema.get(metric)
            value = value if prev is None else EMA_BETA * prev + (1 - EMA_BETA) * value
            self._ema[metric] = value
        outside = rule.outside(value)
        was = self._alerting.get(metric, False)
        self._alerting[metric] = outside
        if outside and not was:
            self.fired.append((metric, step, value))
            if self.enabled:
                smoothed = " (smoothed)" if rule.smooth else ""
                warnings.warn(f"megacontext alert at step {step}: {metric}{smoothed} = {value:.4g} is outside "
                              f"{rule.band()}: {rule.advice}", MCTelemetryAlert, stacklevel=2)
            return True
        if was and not outside:
            logger.info("megacontext: %s back inside %s at step %d (%.4g)", metric, rule.band(), step, value)
        return False

    def state_dict(self) -> dict[str, dict[str, float] | dict[str, bool]]:
        return {"ema": dict(self._ema), "alerting": dict(self._alerting)}

    def load_state_dict(self, state: dict) -> None:
        self._ema = dict(state.get("ema", {}))
        self._alerting = dict(state.get("alerting", {}))
