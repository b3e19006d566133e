"""Training throughput, vanilla vs --mc, on the same model and token budget.

    python benchmarks/throughput.py [--quick] [--depth N] [--seq-len T] [--batch B] [--steps S]
                                    [--warmup N] [--device auto|cpu|cuda] --json PATH

Model (``benchmarks/_models.py``): nanochat's own ``GPT`` through a patched copy of ``NANOCHAT_DIR``
when it is set (width ``64 * depth`` rounded up to head_dim 128, vocab 65,536, value embeddings,
window pattern ``L``), else the stand-in ``TinyGPT`` (width ``64 * depth``, head_dim 64, vocab
8192); ``sequence_len = T``; AdamW on every parameter; fp32 on CPU, bf16 autocast on CUDA; eager.
Rows ``(depth, T, B, steps)``: depth 4 at T 1024 (8 steps), depth 12 at T 1024 (4 steps) and
2048 (3 steps), B 1; ``--quick``: the depth-12, T-1024 row alone with 1 warm-up step; any of
``--depth/--seq-len/--batch/--steps``: one row of that shape. Both runs of a row see the same
micro-batches of ``B x T`` random tokens (one per optimizer step).

- vanilla: ``loss = model(x, y)``, backward, AdamW.
- ``--mc``: the plugin itself, as patched nanochat drives it: nanochat's GPT through
  ``attach_plugin`` (its patched forward calls ``before_forward`` -> packed forward -> ``extra_loss``),
  the stand-in through the same hooks called by the benchmark; then backward -> AdamW ->
  ``after_optimizer_step`` -> ``on_step_telemetry``; default knobs except ``--mc_auto_batch 0``
  (same tokens per step), telemetry at its defaults (JSONL, every 50 steps) in a temporary
  directory. The curriculum spans the measured steps (budget annealed from 80% of T to 20%).

Vanilla and MC steps alternate (one each, round-robin), so load from other processes on a
shared machine hits both alike. Times are per optimizer step, device-synchronised.

Keys (see ``benchmarks/README.md``):

- ``vanilla_tok_s``, ``mc_tok_s``: data tokens per second over the measured steps (``S * B * T`` /
  their total time: MC's step time follows the curriculum's budget, so a median step would not
  match the FLOPs, which are totals); ``*_tok_s_median`` use the median step time.
- ``flop_ratio`` = MC FLOPs per token / vanilla FLOPs per token. MC FLOPs are what the plugin
  counted as executed over the measured steps (``TrainingMonitor``, ``MCController.step_flops``:
  base forward+backward over every variant row at the step's budget, the teacher's full-context
  pass, GistNet and LensNet);
  vanilla's are ``f(T)`` per token (nanochat's ``6 N + 12 L D T``).
- ``efficiency`` = ``(mc_tok_s / vanilla_tok_s) * flop_ratio``: MC's achieved FLOP/s over
  vanilla's (also as ``ratio``). 1.0 = MC's extra work runs as efficiently as the base model's own; the
  goal is >= 1.0.
- ``mfu``: MC's honest MFU in % (the plugin's ``mc/mfu``), ``vanilla_mfu`` likewise for vanilla;
  ``null`` on CPU (no peak).
- ``vanilla_gflops_per_s``, ``mc_gflops_per_s``; ``vanilla_step_ms``, ``mc_step_ms`` (medians and every
  step in ``*_all``); ``mc_flops_per_step_mean``; shapes (``W_start``, ``W_end``, ``V``).
- telemetry cost at the defaults, measured by the plugin's own timer: ``telemetry_frac`` (its time
  over the MC run's time; the run has one snapshot in ``S`` steps, more than the default 1 in 50),
  ``telemetry_snapshot_ms`` (a cadence step: events + focus probe), ``telemetry_step_ms`` (median
  of the other steps: counters), ``telemetry_frac_default`` = ``(snapshot + 49 * step) / (50 *
  mean MC step)``: the share at the default cadence.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, plot_lines, png_path, print_table, write_json
from _models import BenchModel, build_model, model_kind

from megacontext_plugin import hookspecs
from megacontext_plugin.plugin import MegaContextPlugin
from megacontext_plugin.telemetry import MCTelemetryAlert
from megacontext_plugin.training.mfu import device_peak_flops

TARGET_EFFICIENCY = 1.0
FULL_ROWS = ((4, 1024, 1, 8), (12, 1024, 1, 4), (12, 2048, 1, 3))
"""(depth, T, B, steps): depth 4, and depth 12 (nanochat's vocabulary with its GPT) at T = 1024 and 2048, B = 1."""
QUICK_ROWS = ((12, 1024, 1, 3),)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Vanilla:
    def __init__(self, bench: BenchModel, device: torch.device) -> None:
        self.bench, self.model, self.device = bench, bench.model, device
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self, x: torch.Tensor, y: torch.Tensor, autocast: Any) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        with autocast():
            loss = self.bench.loss(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0


class MCHost:
    """The calls patched nanochat's base_train makes: nanochat's GPT through ``attach_plugin`` (its own
    patched forward calls the hooks), the stand-in through the same hooks called here."""

    def __init__(self, model: nn.Module, device: torch.device, T: int, B: int, steps: int, telemetry_dir: str) -> None:
        self.model, self.device = model, device
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugin = MegaContextPlugin()
        self.pm.register(self.plugin, name="megacontext")
        parser = argparse.ArgumentParser()
        parser.add_argument("--max-seq-len", type=int, default=T)
        parser.add_argument("--device-batch-size", type=int, default=B)
        self.pm.hook.register_arguments(parser=parser)
        self.args = parser.parse_args(["--mc", "--mc_auto_batch", "0", "--mc_telemetry_dir", telemetry_dir])
        self.pm.hook.adjust_arguments(args=self.args, stage="base")
        assert any(self.pm.hook.setup_model(model=model, args=self.args, num_iterations=steps, stage="base"))
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.logs: list[dict[str, float]] = []
        self.patched_forward = hasattr(model, "attach_plugin")
        if self.patched_forward:
            model.attach_plugin(self.pm.hook)

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor, autocast: Any) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        with autocast():
            loss = self.model(x, y) if self.patched_forward else self._hooked_loss(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.pm.hook.after_optimizer_step(step=step)
        sync(self.device)
        elapsed = time.perf_counter() - t0
        log: dict[str, float] = {}
        for extra in self.pm.hook.on_step_telemetry(step=step, metrics={}):
            log.update(extra)
        self.logs.append(log)
        return elapsed

    def _hooked_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The patched forward's plugin path, for a model without one (the stand-in)."""
        ov = self.pm.hook.before_forward(model=self.model, idx=x, targets=y, kv_cache=None)
        cos_sin = self.pm.hook.positional_overrides(model=self.model, override=ov)
        nll = self.model(inputs_embeds=ov.inputs_embeds, targets=ov.targets, cos_sin=cos_sin, loss_reduction="none")
        valid = (ov.targets.reshape(-1) >= 0).float()
        loss = (nll * valid).sum() / valid.sum()
        for extras in self.pm.hook.extra_loss(model=self.model, override=ov, per_entry_loss=nll):
            loss = loss + sum(extras.values())
        return loss

    def close(self) -> None:
        self.plugin.reset()
        self.pm.unregister(self.plugin)


def measure(depth: int, T: int, B: int, steps: int, warmup: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One row: vanilla and MC on the same ``steps`` micro-batches, steps alternating."""

    def autocast() -> Any:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    vanilla = Vanilla(build_model(depth, T, seed, device=device), device)
    mc_bench = build_model(depth, T, seed, device=device)
    vocab = mc_bench.vocab
    gen = torch.Generator().manual_seed(seed)
    data = [torch.randint(0, vocab, (B, T + 1), generator=gen) for _ in range(steps + warmup)]
    data = [(d[:, :-1].to(device), d[:, 1:].to(device)) for d in data]
    tmp = tempfile.TemporaryDirectory(prefix="mc-throughput-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCTelemetryAlert)
        mc = MCHost(mc_bench.model, device, T, B, steps, tmp.name)
        monitor, ctrl = mc.plugin.monitor, mc.plugin.controller
        assert monitor is not None and ctrl is not None
        started = time.perf_counter()
        for i in range(warmup):
            x, y = data[steps + i]
            vanilla.step(x, y, autocast)
            mc.step(0, x, y, autocast)
        mc.plugin.training.step = 0  # the measured steps run the whole curriculum from its start,
        monitor._snap_step = -1  # and step 0 takes its telemetry snapshot again (a cadence step)
        monitor.metrics()  # the MFU window starts here
        flops0 = monitor.flops
        v_times, m_times, tel_ms, m_flops = [], [], [], []
        for s in range(steps):
            x, y = data[s]
            v_times.append(vanilla.step(x, y, autocast))
            tel0, f0 = monitor.telemetry_s, monitor.flops
            m_times.append(mc.step(s, x, y, autocast))
            tel_ms.append((monitor.telemetry_s - tel0) * 1e3)
            m_flops.append(monitor.flops - f0)
            print(f"depth {depth} T {T} B {B} step {s}: vanilla {v_times[-1] * 1e3:.0f} ms, mc "
                  f"{m_times[-1] * 1e3:.0f} ms (W {ctrl.budget_at(s)})", flush=True)
        mc_flops = monitor.flops - flops0
        mc_metrics = mc.logs[-1]
        mfus = [log["mc/mfu"] for log in mc.logs[warmup:] if "mc/mfu" in log]
        every = ctrl.cfg.mc_telemetry_every
        W_start, W_end, V = ctrl.budget_at(0), ctrl.budget_at(steps), ctrl.cfg.num_variants
        mc.close()
    tmp.cleanup()
    elapsed = time.perf_counter() - started

    tokens_per_step = B * T
    v_med, m_med = statistics.median(v_times), statistics.median(m_times)
    vanilla_tok_s, mc_tok_s = tokens_per_step / statistics.mean(v_times), tokens_per_step / statistics.mean(m_times)
    vanilla_fpt = vanilla.bench.flops_per_token(T)
    mc_fpt = mc_flops / (tokens_per_step * steps)
    flop_ratio = mc_fpt / vanilla_fpt
    efficiency = (mc_tok_s / vanilla_tok_s) * flop_ratio
    peak = device_peak_flops(device)
    vanilla_mfu = 100 * vanilla_fpt * vanilla_tok_s / peak if math.isfinite(peak) else None
    mfu = statistics.median(mfus) if mfus and math.isfinite(peak) else None  # the plugin's mc/mfu, per step
    cadence = [t for s, t in enumerate(tel_ms) if every and s % every == 0]
    others = [t for s, t in enumerate(tel_ms) if not (every and s % every == 0)]
    snapshot_ms = statistics.mean(cadence) if cadence else 0.0
    step_tel_ms = statistics.median(others) if others else 0.0
    return {
        **mc_bench.describe(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "T": T, "B": B, "V": V, "W_start": W_start, "W_end": W_end, "steps": steps, "warmup": warmup,
        "elapsed_s": elapsed,
        "vanilla_tok_s": vanilla_tok_s, "mc_tok_s": mc_tok_s,
        "vanilla_tok_s_median": tokens_per_step / v_med, "mc_tok_s_median": tokens_per_step / m_med,
        "flop_ratio": flop_ratio, "efficiency": efficiency, "ratio": efficiency,
        "mfu": mfu, "vanilla_mfu": vanilla_mfu,
        "vanilla_flops_per_token": vanilla_fpt, "mc_flops_per_token": mc_fpt,
        "mc_flops_per_step_mean": mc_flops / steps,
        "vanilla_gflops_per_s": vanilla_fpt * vanilla_tok_s / 1e9, "mc_gflops_per_s": mc_fpt * mc_tok_s / 1e9,
        "vanilla_step_ms": v_med * 1e3, "mc_step_ms": m_med * 1e3,
        "vanilla_step_ms_all": [t * 1e3 for t in v_times], "mc_step_ms_all": [t * 1e3 for t in m_times],
        "mc_step_gflops_all": [f / t / 1e9 for f, t in zip(m_flops, m_times, strict=True)],
        "vanilla_step_gflops_all": [vanilla_fpt * tokens_per_step / t / 1e9 for t in v_times],
        "telemetry_every": every, "telemetry_frac": sum(tel_ms) / (1e3 * sum(m_times)),
        "telemetry_snapshot_ms": snapshot_ms, "telemetry_step_ms": step_tel_ms,
        "telemetry_frac_default": ((snapshot_ms + (every - 1) * step_tel_ms) / (every * 1e3 * statistics.mean(m_times))
                                   if every else 0.0),
        "mc_time_controller_ms": mc_metrics.get("mc/time_controller_ms"),
    }


def main(argv: list[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--depth", type=int, default=None)
    extra.add_argument("--seq-len", type=int, default=None)
    extra.add_argument("--batch", type=int, default=None)
    extra.add_argument("--steps", type=int, default=None)
    extra.add_argument("--warmup", type=int, default=None)
    extra.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ours, rest = extra.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0] + " Extra flags: --depth, --seq-len, --batch, --steps, --warmup, "
                      "--device (any of the first four: one row of that shape).", rest)
    warmup = ours.warmup if ours.warmup is not None else (1 if args.quick else 2)
    table = QUICK_ROWS if args.quick else FULL_ROWS
    if any(getattr(ours, k) is not None for k in ("depth", "seq_len", "batch", "steps")):
        base = table[0]
        table = ((ours.depth or base[0], ours.seq_len or base[1], ours.batch or base[2], ours.steps or base[3]),)
    device = torch.device("cuda" if ours.device == "cuda" or (ours.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1) and device.type == "cpu":
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other processes compete for the "
              f"cores; vanilla and MC steps alternate so both see it alike", flush=True)
    rows = [measure(depth, T, B, steps, warmup, device, args.seed) for depth, T, B, steps in table]
    print(f"\nvanilla vs --mc ({model_kind()} model), {rows[0]['device']}, torch threads {torch.get_num_threads()}")
    print_table(rows, ["model", "depth", "vocab", "T", "B", "steps", "vanilla_tok_s", "mc_tok_s", "flop_ratio",
                       "efficiency", "vanilla_gflops_per_s", "mc_gflops_per_s", "telemetry_frac_default"])
    for row in rows:
        print(f"depth {row['depth']} T {row['T']}: efficiency {row['efficiency']:.3f} (goal >= {TARGET_EFFICIENCY}); "
              f"mfu {row['mfu']} (vanilla {row['vanilla_mfu']})")
    payload = {"benchmark": "throughput", "quick": args.quick, "model": model_kind(),
               "target_efficiency": TARGET_EFFICIENCY, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
               "rows": rows}
    write_json(args.json, payload)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        xs = list(range(row["steps"]))
        name = f"d{row['depth']} T{row['T']}"
        series[f"{name} vanilla"] = (xs, row["vanilla_step_gflops_all"])
        series[f"{name} --mc"] = (xs, row["mc_step_gflops_all"])
    plot_lines(png_path(args, "throughput.png"), series,
               title=f"achieved GFLOP/s per step ({model_kind()} model)",
               xlabel="measured step (MC budget anneals from 80% to 20% of T)", ylabel="GFLOP/s")


if __name__ == "__main__":
    main()
