"""Training-controller latency per batch against the base model's forward+backward on the same batch.

    python benchmarks/controller_latency.py [--quick] [--depth N] [--phase end|mid|start] --json PATH

Setup (``benchmarks/_models.py``): nanochat's own ``GPT`` through a patched copy of ``NANOCHAT_DIR``
when it is set (width ``64 * depth`` rounded up to head_dim 128, vocab 65,536), else the stand-in
``TinyGPT`` (width ``64 * depth``, head_dim 64, vocab 8192); ``sequence_len = T``, fp32 on CPU.
Rows: ``--depth`` (default 4) at T in {256, 1024, 4096} and B in {1, 8}, plus depth 12 at
T = 1024 and 2048, B = 1 (nanochat's shapes; ``--no-nanochat-rows`` leaves them out,
``--only-nanochat-rows`` keeps them alone). The
controller uses the default nets, knobs and variants (the recency baseline, 1 on-policy, 2 teacher,
2 random: V = 6) except block_size K = 32, ``allocator_recent_tokens`` 64 and ``mc_horizon`` 32,
so a micro-batch ``[B, T]`` becomes ``R = 6 B`` packed rows of ``W`` entries. ``W`` is
``MCController.budget_at`` at ``--phase`` (default ``end``: the final budget,
``mc_train_wc_length`` 0.2 -> W = 192 at T = 1024 and 768 at T = 4096; at T = 256 the fraction
0.2 fails the config check (51 entries do not exceed the 64-token protected tail), so the
smallest valid fraction in steps of 0.05 is used there, 0.3, and the controller's own floor
sets W; every row reports ``W``). ``end`` has the least base work per batch, so it is the
worst case for the ratio. Goal: ratio <= 0.05 at depth 12, <= 0.15 at depth 4.

Each repeat runs one full MC training step, then the base model alone on that step's packed batch:

1. MC step: ``process_batch`` (with the teacher's ``nll_fn``, as ``TrainingRun`` gives it)
   -> base forward on the packed inputs -> ``compute_losses`` ->
   backward -> ``step_aux``. The backward is split at two leaves so that base and aux backward
   are timed directly, not by subtracting two noisy runs: the base model reads
   ``inputs.detach().requires_grad_()`` and the losses read ``scores.detach().requires_grad_()``;
   ``total.backward()`` then runs the base model's backward (plus the tiny loss graph) and stops
   at the leaves, and ``torch.autograd.backward([inputs, scores], [leaf grads])`` runs the rest:
   the packing gather, GistNet (all levels), the LOD0 ``wte`` lookup and LensNet. By the chain
   rule this is exactly the gradient of one ``total.backward()``; only the order differs.
2. Base step: forward+backward of the base model alone on the same packed batch (inputs
   detached, as a leaf that requires grad, as ``wte``'s output does in vanilla training),
   per-entry NLL reduced by the same masked mean as MC's token loss, plus the backward of the
   token lookup ``wte(x)`` (the dense ``[vocab, D]`` embedding gradient every base step pays; the
   MC step's LOD0 lookup is a leaf too, its backward timed apart as ``embedding_bwd_in_step_ms``
   and not charged to the controller). No optimizer step.

Row keys (medians over the repeats after one warmup step; ms per micro-batch):

- ``base_step_ms``: step 2, the base work MC makes the model do (R x W entries).
- ``controller_ms``: everything else the MC step adds = ``process_batch_ms`` (the controller's
  own ``timings_ms["controller_ms"]``: ``layouts_ms`` + ``build_ms`` + ``teacher_ms`` (the
  teacher's full-context saliency pass) + ``guided_ms`` (on-policy and teacher layouts) +
  ``packing_ms`` + ``positional_ms`` + ``lens_ms``) + ``losses_ms`` + ``aux_backward_ms`` (step 1's second
  backward) + ``aux_step_ms`` (``step_aux``: KL snapshot, AdamW step, zero_grad, EMAs).
- ``ratio`` = median ``controller_ms`` / median ``base_step_ms`` at a step where the teacher's pass
  runs; ``teacher_every`` (``--teacher-every N``, the knob ``--mc_teacher_every``, default 1) and
  ``ratio_amortized`` = (``controller_ms`` - ``teacher_ms`` x (1 - 1/N)) / ``base_step_ms``: the
  mean over N steps, of which one runs the pass (the others keep its guided-layout work, so this
  overstates them slightly). The goal, <= 0.05 at depth 12, is judged on ``ratio_amortized``.
- per-phase keys ``layouts_ms``, ``build_ms`` (LOD0 ``wte`` + every GistNet level),
  ``packing_ms``, ``positional_ms``, ``lens_ms`` (LensNet with grad + the previous LensNet for
  the KL term), ``losses_ms``, ``aux_backward_ms``, ``aux_step_ms``, their ``*_frac`` share of
  ``controller_ms`` and ``biggest_phase``; ``controller_ms_all`` / ``base_step_ms_all`` list
  every repeat; ``controller_ms_min``, ``base_step_ms_min`` and ``ratio_min`` (ratio of the
  minima) are less sensitive to other processes on a shared machine; ``loadavg_1m`` at the row's end.
- FLOPs (analytic, matmuls only, 2 per multiply-add): ``base_gflop`` (nanochat's
  ``6 N + 12 L D ctx`` per entry with ctx = W), ``gistnet_gflop`` (3 x forward over every gist
  of every level), ``lensnet_gflop`` (4 x forward: forward, backward, the previous LensNet),
  ``flops_ratio`` = (GistNet + LensNet) / base: the ratio a device would reach at equal
  efficiency; ``base_gflops_per_s`` and ``controller_gflops_per_s`` show the efficiency of each.
- checks: ``mc_step_ms`` (wall time of the whole step 1) and ``mc_step_over_base``,
  ``base_fwd_in_step_ms`` and ``base_bwd_in_step_ms`` (step 1's base forward and first backward),
  ``unattributed_ms`` = ``mc_step_ms - controller_ms - base_fwd_in_step_ms - base_bwd_in_step_ms``
  (timer gaps; ~0), ``layout_sample_bg_ms``: synchronous time of ``sample_layouts`` for one
  batch. Layouts are sampled for the next step on a background thread while the current step
  runs, so this is not on the critical path and is *not* in ``controller_ms``; on this 2-core
  CPU it competes with the step's own threads (on a GPU host it uses an idle core). The
  benchmark waits for the prefetch before each step so neither timing overlaps it.
- shape: ``W``, ``V``, ``R``, ``entries`` (R x W), ``tokens`` (B x T), ``entries_per_token``,
  ``num_levels``, ``wc_fraction``, ``train_wc_length``, ``step``, ``layout_duplicates``, ``repeats``.

Top level: ``depth``, ``width``, ``phase``, knobs, ``loadavg_start``/``loadavg_end`` (other
processes on the machine inflate timings, small ops more than big matmuls: OpenMP threads wait
for a descheduled sibling), and ``flops_projection``: ``{T, depth, W, flops_ratio,
gistnet_share}`` for nanochat depths 4/12/20/26 at vocab 65536 with the default nets.

Configurations are built up front and measured round-robin (one warmup step each, then one
repeat of every configuration per round), so a burst of load from another process is spread over
all rows instead of spoiling one. Full run: up to 7 repeats per configuration; a configuration
stops once it has 3 and has spent over 60 s in measured repeats (the T = 4096, B = 8 row).
``--quick``: 3 repeats of T = 1024, B = 1 at ``--depth`` and of the first depth-12 row (about
4 minutes with nanochat's GPT on this CPU). CPU only: the controller's
``timings_ms`` are host timers without device synchronisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, plot_lines, png_path, print_table, write_json
from _models import BenchModel, build_model, model_kind

from megacontext_plugin.config import ConfigError, MCConfig
from megacontext_plugin.nets import build_gistnet, build_lensnet
from megacontext_plugin.training import losses
from megacontext_plugin.training.controller import MCBatch, MCController
from megacontext_plugin.training.flops import mc_step_flops
from megacontext_plugin.training.layouts import sample_layouts
from megacontext_plugin.training.run import full_context_nll

SEQ_LENS = (256, 1024, 4096)
BATCHES = (1, 8)
QUICK_SKIP = {(4096, 8)}
NANOCHAT_ROWS = ((12, 1024, 1), (12, 2048, 1))
"""(depth, T, B) at nanochat's real shapes (vocab 65,536 with nanochat's GPT), beside the ``--depth`` grid."""
QUICK_ROWS = ((1024, 1),)
"""``--quick``: the ``--depth`` grid keeps T=1024, B=1, and the nanochat rows keep their first (depth 12)."""
BLOCK_SIZE = 32
RECENT_TOKENS = 64
HORIZON = 32
WC_FRACTION = 0.2
TOTAL_STEPS = 1000
PHASES = {"start": 0.0, "mid": 0.5, "end": 1.0}
TARGET_RATIO = 0.05
"""The goal at nanochat's depth 12 and beyond; depth 4's is ``SMALL_TARGET_RATIO``."""
SMALL_TARGET_RATIO = 0.15


def target_ratio(depth: int) -> float:
    return TARGET_RATIO if depth >= 12 else SMALL_TARGET_RATIO
MIN_REPEATS = 3
CONFIG_SECONDS = 60.0
"""Full run: stop adding repeats to a configuration after this many measured seconds (>= MIN_REPEATS)."""
PROJECTION_DEPTHS = (4, 12, 20, 26)
PROJECTION_VOCAB = 65536
"""nanochat's vocabulary, for the analytic FLOP projection."""
PHASE_KEYS = (
    "layouts_ms",
    "build_ms",
    "teacher_ms",
    "guided_ms",
    "packing_ms",
    "positional_ms",
    "lens_ms",
    "losses_ms",
    "aux_backward_ms",
    "aux_step_ms",
)


def make_config(seq_len: int, teacher_every: int = 1) -> MCConfig:
    """The benchmark's knobs; ``mc_train_wc_length`` raised in 0.05 steps until valid at ``seq_len``."""
    frac = WC_FRACTION
    while True:
        cfg = MCConfig(
            mc=True,
            block_size=BLOCK_SIZE,
            allocator_recent_tokens=RECENT_TOKENS,
            mc_horizon=HORIZON,
            mc_train_wc_length=round(frac, 2),
            mc_teacher_every=teacher_every,
        )
        try:
            cfg.validate_for_model(seq_len)
            return cfg
        except ConfigError:
            if frac >= 1.0:
                raise
            frac += 0.05


def pick_step(ctrl: MCController, phase: str) -> int:
    """A curriculum step at ``phase`` whose next step has the same budget (so the prefetch hits), walked
    back to one where the teacher's pass runs (``--mc_teacher_every N``). With N > 1 the next step has
    the teacher's columns random, so the prefetch does not match a repeat of this step: each repeat
    samples its layouts in ``layouts_ms`` (about 1-2 ms, ``layout_sample_bg_ms``)."""
    step = round(PHASES[phase] * (TOTAL_STEPS - 1))
    while step < TOTAL_STEPS - 1 and ctrl.budget_at(step + 1) != ctrl.budget_at(step):
        step += 1
    while step > 0 and (not ctrl.teacher_pass_at(step, teacher_host=True)
                        or ctrl.budget_at(step + 1) != ctrl.budget_at(step)):
        step -= 1
    return step


def wait_prefetch(ctrl: MCController) -> None:
    """Block until the background layout sample for the next step is done (keeps timings clean).

    Reads the prefetcher's private future without consuming it, so the next ``get`` still hits.
    """
    pending = getattr(ctrl.layouts, "_pending", None)
    if pending is not None:
        pending[1].result()


class LeafLookup(nn.Module):
    """``wte`` whose output is a leaf, so the aux backward stops at LOD0 and the lookup's own
    backward (the dense ``[vocab, D]`` gradient: the base model's cost) is timed apart."""

    def __init__(self, wte: nn.Module) -> None:
        super().__init__()
        self.wte = wte
        self.out: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None

    def forward(self, x_BT: torch.Tensor) -> torch.Tensor:
        self.out = self.wte(x_BT)
        self.leaf = self.out.detach().requires_grad_(True)
        return self.leaf


def mc_step(
    bench: BenchModel, ctrl: MCController, x_BT: torch.Tensor, y_BT: torch.Tensor, step: int
) -> tuple[dict[str, float], MCBatch]:
    """One full MC training step (no base optimizer step), timed phase by phase; the teacher's
    full-context pass runs as in training (``full_context_nll``)."""
    lookup = LeafLookup(bench.wte)
    t0 = time.perf_counter()
    batch = ctrl.process_batch(x_BT, y_BT, lookup, step,
                               nll_fn=full_context_nll(bench.model, x_BT, ctrl.cfg.mc_horizon))
    inputs_leaf = batch.inputs_RWD.detach().requires_grad_(True)
    scores_leaf = batch.scores_RW.detach().requires_grad_(True)
    staged = dataclasses.replace(batch, scores_RW=scores_leaf)  # shares batch.timings_ms
    t1 = time.perf_counter()
    nll_RW = bench.nll(inputs_leaf, batch.value_ids_RW, batch.targets_RW, batch.cos_sin)
    t2 = time.perf_counter()
    out = ctrl.compute_losses(staged, nll_RW)
    t3 = time.perf_counter()
    out.total.backward()  # base model backward + the loss graph; stops at the two leaves
    t4 = time.perf_counter()
    assert inputs_leaf.grad is not None and scores_leaf.grad is not None
    torch.autograd.backward([batch.inputs_RWD, batch.scores_RW], [inputs_leaf.grad, scores_leaf.grad])
    t5 = time.perf_counter()
    assert lookup.out is not None and lookup.leaf is not None and lookup.leaf.grad is not None
    lookup.out.backward(lookup.leaf.grad)
    t5b = time.perf_counter()
    ctrl.step_aux()
    t6 = time.perf_counter()
    ms = {k: batch.timings_ms.get(k, 0.0) for k in PHASE_KEYS[:-2]}
    ms["process_batch_ms"] = batch.timings_ms["controller_ms"]
    ms["aux_backward_ms"] = (t5 - t4) * 1e3
    ms["aux_step_ms"] = (t6 - t5b) * 1e3
    ms["embedding_bwd_in_step_ms"] = (t5b - t5) * 1e3
    ms["controller_ms"] = ms["process_batch_ms"] + ms["losses_ms"] + ms["aux_backward_ms"] + ms["aux_step_ms"]
    ms["base_fwd_in_step_ms"] = (t2 - t1) * 1e3
    ms["base_bwd_in_step_ms"] = (t4 - t3) * 1e3
    ms["mc_step_ms"] = (t6 - t0) * 1e3
    ms["unattributed_ms"] = (
        ms["mc_step_ms"] - ms["controller_ms"] - ms["base_fwd_in_step_ms"] - ms["base_bwd_in_step_ms"]
        - ms["embedding_bwd_in_step_ms"]
    )
    return ms, batch


def base_step(bench: BenchModel, batch: MCBatch, x_BT: torch.Tensor) -> float:
    """ms of the base model's forward+backward alone on ``batch``'s packed inputs, with the backward of
    its own token lookup ``wte(x)``: a step of the base model pays the embedding's dense ``[vocab, D]``
    gradient whatever it reads (in the MC step it is reached through LOD0, so the aux backward holds
    it); without it the controller would be charged the base model's own cost."""
    inputs = batch.inputs_RWD.detach().requires_grad_(True)
    t0 = time.perf_counter()
    nll_RW = bench.nll(inputs, batch.value_ids_RW, batch.targets_RW, batch.cos_sin)
    losses.mean_over(nll_RW, batch.index.valid_RW).backward()
    emb_BTD = bench.wte(x_BT)
    emb_BTD.backward(inputs.grad.new_zeros(emb_BTD.shape))
    return (time.perf_counter() - t0) * 1e3


def nanochat_flops(depth: int, vocab: int, entries: int, context: int) -> float:
    """Forward+backward matmul FLOPs at nanochat's widths (head_dim 64 shapes, nanochat's formula) for the
    analytic projection."""
    width = 64 * depth
    params = depth * 12 * width**2 + vocab * width
    return float(entries * (6 * params + 12 * depth * width * context))


def controller_flops(cfg: MCConfig, width: int, B: int, T: int, R: int, W: int, levels: int) -> tuple[float, float]:
    """Analytic matmul FLOPs of one step's GistNet (fwd + 2x bwd over every gist of every level)
    and LensNet (fwd + 2x bwd over the scored variants + the previous LensNet's forward for the KL
    term), as ``training.flops.mc_step_flops`` counts them; nets on ``meta``."""
    with torch.device("meta"):
        gistnet = build_gistnet(cfg, width, width=cfg.gistnet_width or max(cfg.gistnet_heads, width // 2))
        lensnet = build_lensnet(cfg, width)
    flops = mc_step_flops(lambda context: 0, gistnet, lensnet, batch=B, variants=R // B, width=W, sequence_len=T,
                          block_size=BLOCK_SIZE, horizon=HORIZON, kl_anchor=cfg.mc_lens_kl_weight > 0)
    return float(flops.gistnet), float(flops.lensnet)


class ConfigBench:
    """One (depth, T, B) configuration: its model and controller, kept alive so repeats can be interleaved."""

    def __init__(self, seq_len: int, batch_size: int, depth: int, phase: str, seed: int,
                 teacher_every: int = 1) -> None:
        self.seq_len, self.batch_size, self.depth, self.seed = seq_len, batch_size, depth, seed
        self.bench = build_model(depth, seq_len, seed)
        self.cfg = make_config(seq_len, teacher_every)
        self.ctrl = MCController(self.cfg, dim=self.bench.width, head_dim=self.bench.head_dim, sequence_len=seq_len,
                                 total_steps=TOTAL_STEPS)
        self.step = pick_step(self.ctrl, phase)
        self.gen = torch.Generator().manual_seed(seed)
        self.samples: list[dict[str, float]] = []
        self.measured_s = 0.0
        self.shape: dict[str, int] = {}

    def repeat(self, record: bool = True) -> None:
        """One MC step then one base step on its packed batch; ``record=False`` for warmup."""
        t_rep = time.perf_counter()
        tokens = torch.randint(0, self.bench.vocab, (self.batch_size, self.seq_len + 1), generator=self.gen)
        x_BT, y_BT = tokens[:, :-1], tokens[:, 1:]
        gc.collect()
        wait_prefetch(self.ctrl)
        ms, batch = mc_step(self.bench, self.ctrl, x_BT, y_BT, self.step)
        self.bench.model.zero_grad(set_to_none=True)
        gc.collect()
        wait_prefetch(self.ctrl)
        ms["base_step_ms"] = base_step(self.bench, batch, x_BT)
        self.bench.model.zero_grad(set_to_none=True)
        self.shape = {
            "W": batch.budget,
            "V": batch.layouts.variants,
            "R": batch.rows,
            "num_levels": batch.num_levels,
            "layout_duplicates": batch.layouts.duplicates,
        }
        if record:
            self.samples.append(ms)
            self.measured_s += time.perf_counter() - t_rep

    def wants_more(self, repeats: int, config_seconds: float | None) -> bool:
        if len(self.samples) >= repeats:
            return False
        return config_seconds is None or len(self.samples) < MIN_REPEATS or self.measured_s <= config_seconds

    def finish(self) -> dict[str, Any]:
        """The row (medians over the recorded repeats); closes the controller."""
        seq_len, batch_size, depth, samples, cfg = self.seq_len, self.batch_size, self.depth, self.samples, self.cfg
        budget, V, rows, levels = (self.shape[k] for k in ("W", "V", "R", "num_levels"))
        duplicates = self.shape["layout_duplicates"]
        rng = np.random.default_rng(self.seed)
        bg = []
        for _ in range(3):
            t0 = time.perf_counter()
            sample_layouts(batch_size, 1 + cfg.variant_counts[2], seq_len, BLOCK_SIZE, budget, self.ctrl.recent, rng)
            bg.append((time.perf_counter() - t0) * 1e3)
        self.ctrl.close()
        row: dict[str, Any] = {**self.bench.describe(), "T": seq_len, "B": batch_size}
        for key in samples[0]:
            row[key] = statistics.median(s[key] for s in samples)
        row["ratio"] = row["controller_ms"] / row["base_step_ms"]
        every = self.cfg.mc_teacher_every
        row["teacher_every"] = every
        row["ratio_amortized"] = (row["controller_ms"] - row["teacher_ms"] * (1 - 1 / every)) / row["base_step_ms"]
        row["target_ratio"] = target_ratio(depth)
        row["mc_step_over_base"] = row["mc_step_ms"] / row["base_step_ms"]
        row["controller_ms_min"] = min(s["controller_ms"] for s in samples)
        row["base_step_ms_min"] = min(s["base_step_ms"] for s in samples)
        row["ratio_min"] = row["controller_ms_min"] / row["base_step_ms_min"]
        row["loadavg_1m"] = os.getloadavg()[0]
        for key in PHASE_KEYS:
            row[key.replace("_ms", "_frac")] = row[key] / row["controller_ms"]
        row["biggest_phase"] = max(PHASE_KEYS, key=lambda k: row[k])
        gist_f, lens_f = controller_flops(cfg, self.bench.width, batch_size, seq_len, rows, budget, levels)
        base_f = float(rows * budget * self.bench.flops_per_token(budget))
        row.update(
            base_gflop=base_f / 1e9,
            gistnet_gflop=gist_f / 1e9,
            lensnet_gflop=lens_f / 1e9,
            flops_ratio=(gist_f + lens_f) / base_f,
            base_gflops_per_s=base_f / row["base_step_ms"] / 1e6,
            controller_gflops_per_s=(gist_f + lens_f) / row["controller_ms"] / 1e6,
            repeats=len(samples),
        )
        row["layout_sample_bg_ms"] = statistics.median(bg)
        row["controller_ms_all"] = [s["controller_ms"] for s in samples]
        row["base_step_ms_all"] = [s["base_step_ms"] for s in samples]
        row.update(
            W=budget,
            V=V,
            R=rows,
            entries=rows * budget,
            tokens=batch_size * seq_len,
            entries_per_token=rows * budget / (batch_size * seq_len),
            num_levels=levels,
            wc_fraction=budget / seq_len,
            train_wc_length=cfg.mc_train_wc_length,
            step=self.step,
            layout_duplicates=duplicates,
        )
        return row


def main(argv: list[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--depth", type=int, default=4)
    extra.add_argument("--phase", choices=tuple(PHASES), default="end")
    extra.add_argument("--no-nanochat-rows", dest="nanochat_rows", action="store_false",
                       help="leave out the depth-12 rows at nanochat's vocabulary")
    extra.add_argument("--teacher-every", type=int, default=1,
                       help="--mc_teacher_every: the teacher's pass every N-th step (ratio_amortized)")
    extra.add_argument("--only-nanochat-rows", dest="grid", action="store_false",
                       help="the depth-12 rows alone, without the --depth grid")
    ours, rest = extra.parse_known_args(argv)
    args = parse_args(
        __doc__.splitlines()[0] + " Extra flags: --depth N (default 4: width 64*N), "
        "--phase end|mid|start (curriculum budget, default end).",
        rest,
    )
    if ours.depth < 1:
        raise SystemExit("--depth must be >= 1")
    if ours.teacher_every < 1:
        raise SystemExit("--teacher-every must be >= 1")
    repeats, warmup = (3, 1) if args.quick else (7, 1)
    config_seconds = None if args.quick else CONFIG_SECONDS
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other processes compete "
            f"for the cores and inflate the timings (small ops more than big matmuls)",
            flush=True,
        )
    started = time.perf_counter()
    grid = [(ours.depth, T, B) for T in SEQ_LENS for B in BATCHES
            if ours.grid and ((T, B) in QUICK_ROWS or not (args.quick or (T, B) in QUICK_SKIP))]
    big = list(NANOCHAT_ROWS[:1] if args.quick else NANOCHAT_ROWS) if ours.nanochat_rows else []
    benches = [ConfigBench(T, B, depth, ours.phase, args.seed, ours.teacher_every) for depth, T, B in grid + big]
    for _ in range(warmup):  # then round-robin repeats: a burst of load elsewhere hits every row alike
        for bench in benches:
            bench.repeat(record=False)
    for round_ in range(repeats):
        active = [bench for bench in benches if bench.wants_more(repeats, config_seconds)]
        if not active:
            break
        for bench in active:
            bench.repeat()
        print(f"round {round_ + 1}: {len(active)} configurations, {time.perf_counter() - started:.0f} s", flush=True)
    rows = [bench.finish() for bench in benches]
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    projection = []
    for T in sorted({r["T"] for r in rows}):
        W, levels = next((r["W"], r["num_levels"]) for r in rows if r["T"] == T)
        cfg = make_config(T)
        for depth in PROJECTION_DEPTHS:
            gist_f, lens_f = controller_flops(cfg, 64 * depth, 1, T, cfg.num_variants, W, levels)
            base_f = nanochat_flops(depth, PROJECTION_VOCAB, cfg.num_variants * W, W)
            projection.append(
                {
                    "T": T,
                    "depth": depth,
                    "W": W,
                    "flops_ratio": (gist_f + lens_f) / base_f,
                    "gistnet_share": gist_f / (gist_f + lens_f),
                }
            )
    print(
        f"\ncontroller vs base fwd+bwd on the packed batch, {model_kind()} model, "
        f"phase {ours.phase}, median of {repeats} after {warmup} warmup, {elapsed:.0f} s"
    )
    print_table(rows, ["model", "depth", "vocab", "T", "B", "W", "R", "base_step_ms", "controller_ms", "ratio",
                      "teacher_every", "ratio_amortized", "mc_step_ms", *PHASE_KEYS])
    print()
    print_table(
        rows,
        [
            "T",
            "B",
            "repeats",
            "ratio_min",
            "loadavg_1m",
            "flops_ratio",
            "base_gflops_per_s",
            "controller_gflops_per_s",
            "layout_sample_bg_ms",
            "unattributed_ms",
            "entries_per_token",
            "biggest_phase",
        ],
    )
    print(f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end ({os.cpu_count()} CPUs)")
    print(
        f"\nanalytic FLOP ratio (GistNet + LensNet) / base at nanochat widths, vocab {PROJECTION_VOCAB}, "
        f"default nets, same W:"
    )
    print_table(projection, ["T", "depth", "W", "flops_ratio", "gistnet_share"])
    for depth in sorted({r["depth"] for r in rows}):
        worst = max((r for r in rows if r["depth"] == depth), key=lambda r: r["ratio_amortized"])
        goal = target_ratio(depth)
        print(f"depth {depth}: worst ratio {worst['ratio_amortized']:.3f} at T={worst['T']} B={worst['B']}, the "
              f"teacher's pass every {ours.teacher_every} step(s) "
              f"({'meets' if worst['ratio_amortized'] <= goal else 'MISSES'} the <= {goal} goal)")
    write_json(
        args.json,
        {
            "benchmark": "controller_latency",
            "quick": args.quick,
            "depth": ours.depth,
            "model": model_kind(),
            "phase": ours.phase,
            "teacher_every": ours.teacher_every,
            "block_size": BLOCK_SIZE,
            "allocator_recent_tokens": RECENT_TOKENS,
            "mc_horizon": HORIZON,
            "repeats": repeats,
            "warmup": warmup,
            "skipped": sorted(QUICK_SKIP) if args.quick else [],
            "target_ratio": {"depth>=12": TARGET_RATIO, "smaller": SMALL_TARGET_RATIO},
            "config_seconds": config_seconds,
            "elapsed_s": elapsed,
            "loadavg_start": list(load_start),
            "loadavg_end": list(load_end),
            "rows": rows,
            "flops_projection": projection,
        },
    )
    plot_lines(
        png_path(args, "controller_latency.png"),
        {
            f"depth {d}, B={B}": ([r["T"] for r in rows if (r["depth"], r["B"]) == (d, B)],
                                  [r["ratio"] for r in rows if (r["depth"], r["B"]) == (d, B)])
            for d, B in sorted({(r["depth"], r["B"]) for r in rows})
        },
        title=f"controller / base fwd+bwd, packed batch ({model_kind()}, {ours.phase} budget)",
        xlabel="sequence length T",
        ylabel="controller_ms / base_step_ms",
        logx=True,
        hline=(TARGET_RATIO, f"{TARGET_RATIO} goal"),
    )


if __name__ == "__main__":
    main()
