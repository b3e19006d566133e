"""TrainingMonitor: telemetry events, the focus probe, MFU, fair-comparison axes and alerts of a
``--mc`` training run. The plugin calls it from its hooks; see ``docs/telemetry.md``.

Per micro-batch (``on_batch``, from ``before_forward``) it only adds to counters: data tokens,
variant rows and the FLOPs the micro-batch executes (``MCController.step_flops``, cached per
shape). Every ``--mc_telemetry_every`` steps, on the first micro-batch of the step, it also emits
``mc_tree_snapshot``, one ``working_context_snapshot`` per variant of the first sequence, runs
the focus probe (``training.probe``) and emits ``focus_allocator`` and the refocused WC. After the
optimizer step (``after_step``) it closes the step's timing (wall time between consecutive
optimizer steps), emits ``mc_timing`` on cadence steps and feeds the alert monitor. ``metrics``
returns the ``mc/*`` values for ``on_step_telemetry``.

Only the main process (rank 0) emits events, probes and warns; every rank counts. The time the
monitor itself spends is measured and reported (``mc/telemetry_frac``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..telemetry import (
    FOCUS_ALLOCATOR,
    MC_BATCH_STATS,
    MC_TIMING,
    MC_TREE_SNAPSHOT,
    PREF_DEBUG,
    WORKING_CONTEXT_SNAPSHOT,
    AlertMonitor,
    NoOpTelemetryProvider,
    TelemetryEvent,
    TelemetryProvider,
    make_run_provider,
    new_run_id,
)
from .controller import MCBatch, MCController, MCLosses
from .mfu import base_flops_fn, device_peak_flops, head_flops_per_token, mfu_percent
from .probe import FocusProbe, probe_focus

ALERT_LOSS_KEYS = ("wc_budget", "delta_nll_h", "token_loss", "lens_loss", "adv_delta_mean", "adv_delta_p95",
                   "preference_corr_mean", "variants_total")
"""The step metrics the alerts read on cadence steps (``wc_budget`` first: it marks a new drift regime)."""

TIMING_KEYS = ("build_ms", "positional_ms", "lens_ms", "packing_ms", "losses_ms", "layouts_ms", "teacher_ms",
               "guided_ms", "controller_ms")


class TrainingMonitor:
    """See the module docstring. ``clock`` is injectable for tests (seconds, monotonic)."""

    def __init__(self, controller: MCController, base_flops: Callable[[int], int], *, every: int,
                 provider: TelemetryProvider | None = None, run_id: str = "", rank: int = 0, world_size: int = 1,
                 peak_flops: float = math.inf, alerts: AlertMonitor | None = None, alert_warmup_steps: int = 10,
                 clock: Callable[[], float] = time.perf_counter, head_flops: int = 0) -> None:
        self.controller = controller
        self.base_flops = base_flops
        self.head_flops = head_flops
        """The output head's share of ``base_flops`` per token (``mfu.head_flops_per_token``)."""
        self.every = every
        self.provider: TelemetryProvider = provider if provider is not None else NoOpTelemetryProvider()
        self.run_id = run_id
        self.rank = rank
        self.world_size = max(1, world_size)
        self.main = rank == 0
        self.peak_flops = peak_flops
        self.alerts = alerts if alerts is not None else AlertMonitor(enabled=self.main)
        self.clock = clock
        self.alert_warmup_steps = alert_warmup_steps
        """Steps of this process whose controller time is not checked (lazy init, compilation)."""
        self.steps_seen = 0
        # cumulative, per rank (restored on resume)
        self.tokens = 0
        self.rows = 0
        self.flops = 0
        self.wall_offset_s = 0.0
        self.telemetry_s = 0.0
        self.errors = 0
        self.events = 0
        """Events handed to the provider (accepted or dropped by it)."""
        # the current step
        self._t_start: float | None = None
        self._step_start: float | None = None
        self._last_step_end: float | None = None
        self._step_flops = 0
        self._step_tel_s = 0.0
        self._step_timings: Mapping[str, float] | None = None
        self._snap_step = -1
        # since the last metrics() call
        self._window: list[tuple[int, float]] = []
        self.last_step_flops = 0
        self.last_probe: FocusProbe | None = None
        self._probe_values: tuple[float, float] | None = None
        self._flops_cache: dict[tuple[int, int, int], int] = {}
        self._budget: float | None = None
        """The curriculum budget of the last cadence step (a change starts a new drift regime)."""
        self._last_report: float | None = None
        self._closed = False

    @classmethod
    def for_run(cls, controller: MCController, model: nn.Module, stage: str, *,
                alert_warmup: int = 0) -> tuple[TrainingMonitor, str]:
        """The monitor of a training run of ``stage`` with ``controller`` driving ``model``: provider
        from ``--mc_telemetry`` (rank 0 only), base FLOPs from the model, peak from the device,
        alerts quiet for the first ``alert_warmup`` steps. Returns the monitor and a line saying
        where events go. Raises ``TelemetryConfigError`` for an OTLP configuration mistake."""
        cfg = controller.cfg
        rank, world = dist_info()
        if rank == 0 and cfg.mc_telemetry_every > 0:
            provider, run_id, where = make_run_provider(cfg.mc_telemetry, stage,
                                                        telemetry_dir=cfg.mc_telemetry_dir or None)
        else:
            provider, run_id = NoOpTelemetryProvider(), new_run_id(stage)
            where = "off (--mc_telemetry_every 0)" if rank == 0 else "rank 0 only"
        monitor = cls(controller, base_flops_fn(model), every=cfg.mc_telemetry_every, provider=provider,
                      run_id=run_id, rank=rank, world_size=world, peak_flops=device_peak_flops(controller.device),
                      alerts=AlertMonitor(enabled=rank == 0, warmup_steps=alert_warmup),
                      head_flops=head_flops_per_token(model))
        return monitor, where

    # ---- hooks ---------------------------------------------------------------------------------
    def on_batch(self, step: int, idx: torch.Tensor, wte: nn.Module, batch: MCBatch | None, *,
                 budget_step: int | None = None) -> None:
        """A training micro-batch ``idx[B, T]`` of optimizer step ``step`` went through
        ``process_batch`` at curriculum step ``budget_step`` (default ``step``; ``batch`` None: the
        plain forward trains it)."""
        t0 = self.clock()
        if self._t_start is None:
            self._t_start = t0
        if self._step_start is None:
            self._step_start = t0
        B, T = (int(n) for n in idx.shape)
        self._step_flops += self._micro_batch_flops(B, T, step if budget_step is None else budget_step, batch)
        self.tokens += B * T
        self.rows += batch.rows if batch is not None else B
        if (batch is not None and self.main and self.every > 0 and step % self.every == 0
                and self._snap_step != step):
            self._snap_step = step
            self._step_timings = batch.timings_ms  # the same dict: compute_losses adds losses_ms to it
            try:
                self._snapshot(step, idx, wte, batch)
            except Exception as exc:  # telemetry must never stop training
                self._error("snapshot", exc)
        self._step_tel_s += self.clock() - t0

    def on_losses(self, step: int, batch: MCBatch, losses: MCLosses) -> None:
        """The losses of a micro-batch are computed. On a cadence step's snapshot micro-batch, emit
        ``mc_batch_stats`` (variant rows per kind, losses) and ``PrefDebug`` (the preference pairs'
        advantages and LensNet's margins, summarised): the debugging aids of the alerts on
        ``mc/variants_total`` and ``mc/adv_delta_*``. One host sync, on cadence steps only."""
        if not self.main or self._snap_step != step or self._step_timings is not batch.timings_ms:
            return
        t0 = self.clock()
        try:
            self._emit(MC_BATCH_STATS, batch_stats(batch, losses), step)
            self._emit(PREF_DEBUG, pref_debug(losses, self.controller.adv_var_ema), step)
        except Exception as exc:  # telemetry must never stop training
            self._error("batch stats", exc)
        self._step_timings = dict(batch.timings_ms)  # once per cadence step, even with several micro-batches
        self._step_tel_s += self.clock() - t0

    def after_step(self, step: int, last: Mapping[str, Any]) -> None:
        """The optimizer stepped for ``step``; ``last`` = the plugin's metrics of the last micro-batch."""
        t0 = self.clock()
        start = self._last_step_end if self._last_step_end is not None else self._step_start
        dt = t0 - start if start is not None else math.nan
        if self._step_flops and math.isfinite(dt) and dt > 0:
            self._window.append((self._step_flops, dt))
        self.flops += self._step_flops
        if self._step_flops:
            self.last_step_flops = self._step_flops
        self._last_step_end = t0
        self.steps_seen += 1
        if self.main:
            try:
                self._after_step_main(step, last, dt)
            except Exception as exc:
                self._error("after_step", exc)
        self._step_flops, self._step_timings, self._step_start = 0, None, None
        self.telemetry_s += self._step_tel_s + (self.clock() - t0)
        self._step_tel_s = 0.0

    def metrics(self, step: int = -1) -> dict[str, float]:
        """``mc/*`` values for ``on_step_telemetry`` (counts and FLOPs global: x world size) after
        optimizer step ``step``; feeds the MFU and heartbeat alerts."""
        t0 = self.clock()
        if self._last_report is not None:  # the host logs (to W&B) when it asks for these
            self.alerts.observe("mc/heartbeat_s", t0 - self._last_report, step)
        self._last_report = t0
        w = self.world_size
        wall = self.wall_time_s()
        out: dict[str, float] = {
            "mc/tokens_processed": float(self.tokens * w),
            "mc/effective_steps": float(self.rows * w),
            "mc/total_flops": float(self.flops * w),
            "mc/flops_per_step": float(self.last_step_flops * w),
            "mc/wall_time_s": wall,
            "mc/telemetry_dropped": float(self.provider.dropped),
        }
        if wall > 0:
            out["mc/telemetry_frac"] = self.telemetry_s / wall
        if self._window and math.isfinite(self.peak_flops):
            achieved = statistics.median(f / dt for f, dt in self._window)
            mfu = mfu_percent(achieved, 1.0, self.peak_flops)
            if math.isfinite(mfu):
                out["mc/mfu"] = mfu
                self.alerts.observe("mc/mfu", mfu, step)
        self._window.clear()
        if self._probe_values is not None:
            out["mc/swap_rate"], out["mc/residency"] = self._probe_values
        self.telemetry_s += self.clock() - t0
        return out

    def wall_time_s(self) -> float:
        """Seconds since the first training micro-batch of this run (resumed runs continue the count)."""
        if self._t_start is None:
            return self.wall_offset_s
        return self.wall_offset_s + (self.clock() - self._t_start)

    def close(self, timeout_s: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.provider.close(timeout_s)

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "rows": self.rows, "flops": self.flops, "wall_s": self.wall_time_s(),
                "telemetry_s": self.telemetry_s, "last_step_flops": self.last_step_flops,
                "probe": self._probe_values, "alerts": self.alerts.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tokens, self.rows, self.flops = int(state["tokens"]), int(state["rows"]), int(state["flops"])
        self.wall_offset_s, self.telemetry_s = float(state["wall_s"]), float(state["telemetry_s"])
        self._t_start = None
        self.last_step_flops = int(state["last_step_flops"])
        probe = state.get("probe")
        self._probe_values = None if probe is None else (float(probe[0]), float(probe[1]))
        self.alerts.load_state_dict(state.get("alerts", {}))

    # ---- internals -----------------------------------------------------------------------------
    def _micro_batch_flops(self, B: int, T: int, step: int, batch: MCBatch | None) -> int:
        teacher = batch is not None and batch.teacher_pass
        key = (B, T, batch.budget if batch is not None else -1, teacher)
        flops = self._flops_cache.get(key)
        if flops is None:
            flops = self.controller.step_flops(self.base_flops, B, step, T, teacher_pass=teacher,
                                               head_flops_per_token=self.head_flops).total
            self._flops_cache[key] = flops
        return flops

    def _common(self, step: int) -> dict[str, Any]:
        attrs: dict[str, Any] = {"step": step, "session": "train", "rank": self.rank}
        if self.run_id:
            attrs["run_id"] = self.run_id[:64]
        return attrs

    def _emit(self, name: str, attrs: dict[str, Any], step: int) -> None:
        self.events += 1
        self.provider.emit(TelemetryEvent(name, {**attrs, **self._common(step)}))

    def _snapshot(self, step: int, idx: torch.Tensor, wte: nn.Module, batch: MCBatch) -> None:
        c = self.controller
        B, T = (int(n) for n in idx.shape)
        K, L = c.cfg.block_size, batch.num_levels
        nodes = [T // K**level for level in range(L)]
        lod0_bytes = batch.inputs_RWD.element_size()
        gist_bytes = torch.empty((), dtype=c.aux_dtype).element_size()
        tree_bytes = c.dim * (nodes[0] * lod0_bytes + sum(nodes[1:]) * gist_bytes)
        self._emit(MC_TREE_SNAPSHOT, {"tokens_total": T, "num_levels": L, "nodes_per_level": nodes, "block_size": K,
                                      "tree_bytes": tree_bytes, "append_tokens": T, "trees": B}, step)
        lay = batch.layouts
        for v in range(lay.variants):  # the first sequence's variants (rows 0..V-1)
            n = int(lay.lengths_R[v])
            self._emit_wc(step, lay.levels_RW[v, :n], int(lay.starts_RW[v, 0]), int(lay.ends_RW[v, n - 1]), L,
                          w_max=batch.budget, layout=lay.kind(v), variant_index=v,
                          padding=lay.width - n)
        probe = probe_focus(c, idx[0], wte, batch.budget)
        if probe is None:
            return
        self.last_probe = probe
        self._probe_values = (probe.swap_rate, probe.residency)
        r = probe.report
        self._emit(FOCUS_ALLOCATOR, {
            "expands": r.expands, "collapses": r.collapses, "edits": r.expands + r.collapses,
            "swap_rate": probe.swap_rate, "residency": probe.residency, "budget": probe.budget,
            "wc_entries_before": r.length_before, "wc_entries": r.length_after, "iterations": r.iterations,
            "candidates": r.candidates, "utilisation": r.length_after / probe.budget,
            "allocator_ms": r.total_ms, **probe.score_stats()}, step)
        for wc, layout in ((probe.before, "recency"), (probe.after, "refocused")):
            self._emit_wc(step, wc.levels, 0, wc.num_tokens, L, w_max=probe.budget, layout=layout)
        self.alerts.observe("mc/swap_rate", probe.swap_rate, step)
        self.alerts.observe("mc/residency", probe.residency, step)

    def _emit_wc(self, step: int, levels: np.ndarray, start: int, end: int, num_levels: int, **extra: Any) -> None:
        hist = np.bincount(np.asarray(levels, dtype=np.int64), minlength=num_levels)
        self._emit(WORKING_CONTEXT_SNAPSHOT, {
            "wc_entries": len(levels), "wc_tokens": end - start, "level_histogram": hist.tolist(),
            "span_start": start, "span_end": end, "recent_tokens": self.controller.recent, **extra}, step)

    def _after_step_main(self, step: int, last: Mapping[str, Any], dt: float) -> None:
        ctrl_ms = last.get("time_controller_ms")
        if ctrl_ms is not None and self.steps_seen > self.alert_warmup_steps:
            self.alerts.observe("mc/time_controller_ms", float(ctrl_ms), step)
        if self._step_timings is None:  # not a cadence step
            return
        self._observe_losses(step, last)
        attrs: dict[str, Any] = {k: float(self._step_timings.get(k, 0.0)) for k in TIMING_KEYS}
        if math.isfinite(dt):
            attrs["step_ms"] = dt * 1e3
        attrs["telemetry_ms"] = (self._step_tel_s + self.clock() - self._last_step_end) * 1e3  # type: ignore[operator]
        attrs["dropped_events"] = self.provider.dropped
        self._emit(MC_TIMING, attrs, step)

    def _observe_losses(self, step: int, last: Mapping[str, Any]) -> None:
        """Feed the loss-side alerts on a cadence step (one host sync)."""
        keys = [k for k in ALERT_LOSS_KEYS if k in last]
        if not keys:
            return
        on_device = [k for k in keys if torch.is_tensor(last[k]) and last[k].device.type != "cpu"]
        got = dict(zip(on_device, torch.stack([last[k].float() for k in on_device]).tolist(), strict=True)
                   if on_device else {})
        got |= {k: float(last[k]) for k in keys if k not in got}
        budget = got.pop("wc_budget", None)
        if budget is not None and budget != self._budget:
            if self._budget is not None:
                self.alerts.new_regime()
            self._budget = budget
        for key, value in got.items():
            self.alerts.observe(f"mc/{key}", value, step)

    def _error(self, where: str, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            warnings.warn(f"megacontext telemetry: {where} failed ({exc!r}); training continues, later telemetry "
                          f"errors are counted silently", RuntimeWarning, stacklevel=3)


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def batch_stats(batch: MCBatch, losses: MCLosses) -> dict[str, Any]:
    """``mc_batch_stats`` attributes: rows per variant kind, budget, losses (no token ids)."""
    lay = batch.layouts
    per_kind = lay.rows_per_kind()
    attrs: dict[str, Any] = {
        "variants_total": per_kind["random"], "rows_total": batch.rows, "sequences": lay.batch,
        "baseline_rows": per_kind["baseline"],
        "onpolicy_rows": per_kind["on-policy"], "teacher_rows": per_kind["teacher"],
        "random_rows": per_kind["random"], "duplicate_rows": int(lay.duplicates), "wc_budget": int(batch.budget),
        "sequence_tokens": int(lay.ends_RW.max()) if lay.ends_RW.size else 0,
    }
    m = losses.metrics
    for key in ("token_loss", "gist_loss", "delta_nll_h", "lens_loss", "lens_total", "tail_supervised_frac"):
        value = _finite(m[key]) if key in m else None
        if value is not None:
            attrs[key] = value
    lods = []
    for level in range(batch.num_levels):
        value = _finite(m[f"lod{level}_loss"]) if f"lod{level}_loss" in m else None
        if value is None:
            break
        lods.append(value)
    if lods:
        attrs["lod_losses"] = lods
    ms = batch.timings_ms.get("controller_ms", 0.0) + batch.timings_ms.get("losses_ms", 0.0)
    attrs["controller_ms"] = float(ms)
    return attrs


def pref_debug(losses: MCLosses, adv_var_ema: torch.Tensor | None) -> dict[str, Any]:
    """``PrefDebug`` attributes: the supervised preference pairs' advantages and LensNet's margins,
    summarised (counts, moments, extremes, sign agreement, correlation)."""
    pairs = losses.pairs
    adv, margin = pairs["adv"].float(), pairs["margin"].float()
    ok = pairs["supervised"][:, None].expand_as(adv) if adv.numel() else torch.zeros_like(adv, dtype=torch.bool)
    adv, margin = adv[ok].cpu().numpy(), margin[ok].cpu().numpy()
    kept = _finite(losses.metrics["pairs_kept"]) if "pairs_kept" in losses.metrics else None
    attrs: dict[str, Any] = {"pairs": int(adv.size), "pairs_kept": int(kept or 0)}
    if adv.size:
        attrs |= {"adv_mean": float(adv.mean()), "adv_std": float(adv.std()),
                  "adv_abs_p95": float(np.quantile(np.abs(adv), 0.95)), "adv_min": float(adv.min()),
                  "adv_max": float(adv.max()), "margin_mean": float(margin.mean()),
                  "margin_std": float(margin.std()), "margin_min": float(margin.min()),
                  "margin_max": float(margin.max())}
        decided = adv != 0
        if decided.any():
            attrs["agreement"] = float((np.sign(margin[decided]) == np.sign(adv[decided])).mean())
        corr = _finite(losses.metrics["preference_corr_mean"]) if "preference_corr_mean" in losses.metrics else None
        if corr is not None:
            attrs["corr"] = corr
    if adv_var_ema is not None:
        scale = _finite(torch.as_tensor(adv_var_ema).float().sqrt())
        if scale is not None:
            attrs["adv_scale"] = scale
    return attrs


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``: torch.distributed when initialised, else torchrun's variables, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
