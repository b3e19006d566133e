"""MCController: trains MegaContext inside the base model's own training loop.

Per micro-batch ``x[B, T]``, ``y[B, T]`` (``y`` is ``x`` shifted by one; -1 = no target). ``T``
may change from batch to batch (chat SFT: the longest conversation of the batch) and exceed the
model's ``sequence_len``; what only ``T`` decides (tree levels, budget floor, whether compression
means anything at all) is computed once per ``T`` (``length_plan``).

1. ``process_batch``: None when ``T`` is too short to compress (``can_compress``: the caller runs
   the plain forward); otherwise ``V`` layouts per row (the recency baseline and ``V-1`` random
   working contexts at the curriculum budget, sampled ahead on a background thread), then the
   batch itself (``batching.BatchBuilder``: trees, guided variants, packed inputs, LensNet scores).
2. The base model runs forward on the packed inputs and returns per-entry NLL ``[B*V, W]``.
3. ``compute_losses``: the token, gist and LensNet losses (``objective``).
4. ``step_aux``: all-reduce the aux nets' gradients under DDP, snapshot LensNet (the KL anchor
   for the next step: the policy before this update), step their optimizer, advance the EMAs
   (``aux_trainer.AuxTrainer``).

The controller keeps what decides a batch: the curriculum (budgets, the teacher's cadence, the
variant counts, the FLOPs they cost) and the layout generator; each other piece of state has one
owner beside it: the aux trainer (nets, optimizer, KL anchor, EMAs, steps done) and the batch
builder (the rows' rotary tables).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..config import MCConfig
from ..context.positions import ROPE_BASE
from ..focus import trained_level
from ..focus.budget import curriculum_budget, smallest_useful_budget
from ..nets import AuxNets
from ..tree.protocol import max_tree_level
from . import objective
from .aux_trainer import AuxTrainer
from .batching import BatchBuilder, MCBatch
from .flops import StepFlops, mc_step_flops, vanilla_step_flops
from .guided import NllFn
from .layouts import LayoutPrefetcher
from .objective import MCLosses
from .timing import Timings

__all__ = ["LengthPlan", "MCBatch", "MCController", "MCLosses"]


@dataclass(frozen=True)
class LengthPlan:
    """What only the batch length ``T`` decides; ``MCController.length_plan`` caches one per ``T``."""

    length: int
    num_levels: int
    """Tree levels of a ``T``-token sequence, LOD0 included (``max_tree_level(T, K) + 1``)."""
    budget_floor: int
    """``smallest_useful_budget(T, K, recent)``: the curriculum never goes below it."""
    compressible: bool
    """At least one complete block lies before the protected tail and the widest curriculum
    budget (step 0) is below ``T``, so random variants differ from the all-raw baseline."""


class MCController(nn.Module):
    """Decides each batch (the curriculum, the layouts) and hands the work to the state's owners:
    ``aux`` (``AuxTrainer``), ``batches`` (``BatchBuilder``) and the losses (``objective``).

    ``dim``/``head_dim``/``sequence_len`` describe the base model. ``total_steps`` drives the
    curriculum (budget annealed from 80% of T to ``--mc_train_wc_length``). GistNet, LensNet and
    the KL anchor are registered here too, so the controller's module tree (``named_parameters``,
    ``train``/``eval``) is ``gistnet``, ``lensnet`` and ``lens_prev``.
    """

    def __init__(self, cfg: MCConfig, *, dim: int, head_dim: int, sequence_len: int, total_steps: int,
                 device: torch.device | str = "cpu", rope_base: float = ROPE_BASE) -> None:
        super().__init__()
        self.aux = AuxTrainer(AuxNets.build(cfg, dim=dim, sequence_len=sequence_len, device=device))
        self.nets = self.aux.nets
        """GistNet and LensNet with the resolved knobs and dtype: what inference needs of this controller."""
        cfg = self.cfg = self.nets.cfg
        self.dim, self.head_dim, self.sequence_len = dim, head_dim, sequence_len
        self.rope_base = rope_base
        """The base model's rotary base (``context.positions.rope_base``)."""
        self.total_steps = max(1, total_steps)
        self.device = self.nets.device
        self.aux_dtype = self.nets.aux_dtype
        self.gistnet, self.lensnet, self.lens_prev = self.nets.gistnet, self.nets.lensnet, self.aux.lens_prev
        self.optimizer = self.aux.optimizer
        self.layouts = LayoutPrefetcher(cfg.mc_seed)
        self.recent = cfg.training_tail(sequence_len)
        """Raw tail of every training variant: the prompt's tail, then the horizon H."""
        self.prompt_recent = cfg.prompt_tail(sequence_len)
        """Raw tail of a prompt (training's prompt is everything before the horizon; inference's the user's)."""
        self.lens_level = trained_level(sequence_len, cfg.mc_horizon, cfg.block_size, self.prompt_recent)
        """The coarsest gist level LensNet learns to score: a coarser gist is scored through its
        descendants at this level (``focus.lens_view``); chat's room-making collapses prefer it too."""
        self._plans: dict[int, LengthPlan] = {}
        full = self.length_plan(sequence_len)
        self.num_levels, self.budget_floor = full.num_levels, full.budget_floor  # at T = sequence_len
        self._last_length = sequence_len
        """``T`` of the last layout request: the next step's layouts are prefetched only while ``T``
        repeats (base/mid training); under SFT's varying ``T`` a prefetch would rarely hit."""
        self.batches = BatchBuilder(self.nets, self.lens_prev, head_dim=head_dim, sequence_len=sequence_len,
                                    rope_base=rope_base, lens_level=self.lens_level)
        self.positional_caches = self.batches.positional_caches

    # ---- parameters and state --------------------------------------------------------------
    @property
    def adv_var_ema(self) -> torch.Tensor | None:
        return self.aux.adv_var_ema

    @property
    def budget_ema(self) -> torch.Tensor | None:
        return self.aux.budget_ema

    @property
    def steps_done(self) -> int:
        return self.aux.steps_done

    def aux_parameters(self) -> list[nn.Parameter]:
        return self.aux.parameters()

    def controller_state(self) -> dict[str, Any]:
        return {**self.aux.state(), "layout_rng": self.layouts.state()}

    def load_controller_state(self, state: dict[str, Any]) -> None:
        self.aux.load_state(state)
        self.layouts.set_state(state["layout_rng"])

    # ---- curriculum ---------------------------------------------------------------------------
    def length_plan(self, T: int) -> LengthPlan:
        """What only the batch length ``T`` decides, computed on the first batch of that length."""
        plan = self._plans.get(T)
        if plan is None:
            K = self.cfg.block_size
            floor = smallest_useful_budget(T, K, self.recent) if T >= 1 else 0
            widest = self._budget(0, T, floor) if T >= 1 else 0
            # the curriculum's fraction never grows with the step, so step 0 has the widest budget;
            # a batch longer than the model's window must fit in it (its coarsest layout included)
            compressible = T - self.recent >= K and widest < T and floor <= self.sequence_len
            plan = LengthPlan(T, max_tree_level(T, K) + 1, floor, compressible)
            self._plans[T] = plan
        return plan

    def teacher_pass_at(self, mc_step: int, teacher_host: bool) -> bool:
        """Whether the teacher's full-context pass runs at ``mc_step``, the optimizer steps the plugin has
        seen (``steps_done``, plain ones included: the curriculum's step stands still after base_train):
        the host gives one (``nll_fn``) and ``mc_step`` is one of every ``--mc_teacher_every``. With
        ``--mc_plain_every P``, an N sharing a factor with P lands on the same MC steps each time (N = P:
        every MC step or none), so N and P should be coprime."""
        return teacher_host and mc_step % self.cfg.mc_teacher_every == 0

    def random_variants(self, teacher_pass: bool) -> int:
        """Random variants per sequence: the configured ones, plus the teacher's where its pass does not run."""
        _, teacher, random = self.cfg.variant_counts
        return random if teacher_pass else random + teacher

    def can_compress(self, T: int) -> bool:
        """Whether ``process_batch`` compresses a batch of length ``T`` (False: it returns None and the
        caller runs the plain forward). Cheap: one cached lookup per ``T``, nothing is built.
        False for ``T < 1``."""
        return T >= 1 and self.length_plan(T).compressible

    def budget_at(self, step: int, T: int | None = None) -> int:
        """Working-context entries per variant at ``step`` for batches of length ``T`` (default
        ``sequence_len``; see ``focus.budget.curriculum_budget``)."""
        T = self.sequence_len if T is None else T
        return self._budget(step, T, self.length_plan(T).budget_floor)

    def _budget(self, step: int, T: int, floor: int) -> int:
        """The curriculum's budget, never wider than the model's window (``T > sequence_len``: a
        history longer than the window is what MegaContext compresses into it)."""
        budget = curriculum_budget(self.cfg, step, self.total_steps, T, floor)
        return max(min(budget, self.sequence_len), floor)

    def step_flops(self, base_flops_per_token: Callable[[int], int], batch: int, step: int,
                   T: int | None = None, teacher_pass: bool = False, head_flops_per_token: int = 0) -> StepFlops:
        """Honest FLOPs of one micro-batch of ``batch`` sequences of length ``T`` (default
        ``sequence_len``) at ``step`` (``flops.mc_step_flops``); a length that ``can_compress``
        rejects runs the plain forward: ``vanilla_step_flops``, no aux-net work. ``teacher_pass``:
        the teacher's full-context pass ran (``MCBatch.teacher_pass``: the host gave ``process_batch``
        its ``nll_fn``), its output head (``head_flops_per_token`` of the base's count) on the horizon
        only; it runs only where teacher variants or the distillation need it."""
        T = self.sequence_len if T is None else T
        if not self.can_compress(T):
            return StepFlops(vanilla_step_flops(base_flops_per_token, batch=batch, sequence_len=T), 0, 0)
        cfg = self.cfg
        on_policy, teacher, _ = cfg.variant_counts
        budget = self.budget_at(step, T)
        plan = self.length_plan(T)
        lens_calls = on_policy * max(1, plan.num_levels - 1) * cfg.allocator_iterations
        return mc_step_flops(base_flops_per_token, self.gistnet, self.lensnet, batch=batch,
                             variants=cfg.num_variants, width=budget, sequence_len=T, block_size=cfg.block_size,
                             horizon=cfg.mc_horizon, kl_anchor=cfg.mc_lens_kl_weight > 0,
                             teacher_pass=teacher_pass and bool(teacher or cfg.mc_lens_teacher_weight > 0),
                             lens_calls=lens_calls, head_flops_per_token=head_flops_per_token)

    # ---- step ---------------------------------------------------------------------------------
    def process_batch(self, x_BT: torch.Tensor, y_BT: torch.Tensor, wte: nn.Module, step: int,
                      session_ids: Sequence[Hashable] | None = None, nll_fn: NllFn | None = None) -> MCBatch | None:
        """Trees, variants, packed inputs/targets/positions and LensNet scores for one micro-batch.

        ``T`` may be anything (beyond ``sequence_len`` the budget is the window); ``y_BT`` may hold -1
        anywhere (those targets stay -1 in the pack). Returns None, building nothing, when
        ``can_compress(T)`` is False (too short for any variant to differ from the baseline):
        the caller then runs the plain forward on ``x_BT``, ``y_BT``.

        Rows per sequence: the recency baseline, the on-policy variants, the teacher variants and
        the random ones (``training.guided``). ``nll_fn`` (the base model's full-context per-token
        NLL on given embeddings) is what the teacher needs; without it the teacher variants are
        random ones. LensNet scores every non-baseline row causally: only the entries before the
        horizon, against the H tokens before it (the query inference will have), never the tokens
        whose loss is measured.

        With per-row positions in use, each packed row's rotary table is kept in
        ``positional_caches`` under ``(session_id, variant)`` (``session_ids``: one per sequence,
        default the row index) and ``MCBatch.cos_sin`` is stitched from them (B > 1, every row its
        own layout): see ``BatchBuilder._stitched_rotary``.
        """
        timings = Timings()
        with timings.phase("controller"):
            with timings.phase("layouts"):
                B, T = x_BT.shape
                if tuple(y_BT.shape) != (B, T):
                    raise ValueError(f"targets {tuple(y_BT.shape)} do not match inputs {(B, T)}")
                if not self.can_compress(T):
                    return None
                budget = self.budget_at(step, T)
                teacher_host = nll_fn is not None
                if not self.teacher_pass_at(self.steps_done, teacher_host):  # its variants are random ones
                    nll_fn = None
                random = self.random_variants(nll_fn is not None)
                next_budget = self.budget_at(step + 1, T) if self._last_length == T else None
                self._last_length = T
                next_variants = 1 + self.random_variants(self.teacher_pass_at(self.steps_done + 1, teacher_host))
                sampled = self.layouts.get(B, 1 + random, T, self.cfg.block_size, budget, self.recent,
                                           next_budget=next_budget, next_variants=next_variants)
            num_levels = self.length_plan(T).num_levels
            return self.batches.build(x_BT, y_BT, wte, sampled, budget=budget, num_levels=num_levels, nll_fn=nll_fn,
                                      session_ids=session_ids, timings=timings)

    def compute_losses(self, batch: MCBatch, nll_RW: torch.Tensor) -> MCLosses:
        """All losses from the base model's per-entry NLL ``[R, W]`` (0 where the target is -1): see
        ``objective.compute_losses``. Times ``losses_ms`` into ``batch.timings_ms``."""
        with Timings(batch.timings_ms).phase("losses"):
            out, (adv_var, pressure) = objective.compute_losses(self.cfg, batch, nll_RW, self.aux.adv_var_ema,
                                                                self.aux.budget_ema)
            self.aux.observe(adv_var, pressure)
        return out

    def step_aux(self) -> None:
        """After ``total.backward()``: all-reduce aux grads (DDP), step, refresh the KL snapshot and EMAs."""
        self.aux.step()

    def close(self) -> None:
        self.layouts.close()
