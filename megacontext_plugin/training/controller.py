"""MCController: trains MegaContext inside the base model's own training loop.

Per micro-batch ``x[B, T]``, ``y[B, T]`` (``y`` is ``x`` shifted by one; -1 = no target). ``T``
may change from batch to batch (chat SFT: the longest conversation of the batch) and exceed the
model's ``sequence_len``; what only ``T`` decides (tree levels, budget floor, whether compression
means anything at all) is computed once per ``T`` (``length_plan``).

1. ``process_batch``: None when ``T`` is too short to compress (``can_compress``: the caller runs
   the plain forward); otherwise LOD0 embeddings from the base model's ``wte``; every row's tree at once
   (``build_levels``: one GistNet call per level); ``V`` layouts per row (the recency baseline and
   ``V-1`` random working contexts at the curriculum budget, sampled ahead on a background
   thread); the packed inputs ``[B*V, W, D]``, targets and positions by one gather each; LensNet
   scores of every entry.
2. The base model runs forward on the packed inputs and returns per-entry NLL ``[B*V, W]``.
3. ``compute_losses``: the token loss over every supervised entry of all variants (the model
   learns to read gists), the gist substitutability loss (tail NLL of random variants relative
   to the baseline, over supervised tail tokens; trains GistNet through the gists) and the
   LensNet preference loss (see ``losses``). Sequences whose tail has no supervised target
   give no gist or preference signal.
4. ``step_aux``: all-reduce the aux nets' gradients under DDP, snapshot LensNet (the KL anchor
   for the next step: the policy before this update), step their optimizer, advance the EMAs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..config import MCConfig
from ..context import EntryRows, LevelTable, lens_utilities, model_inputs
from ..context.positions import ROPE_BASE, PositionalCache
from ..focus import focus_config, score_batch_through_view, trained_level
from ..focus.budget import curriculum_budget, smallest_useful_budget
from ..nets import AuxNets, activation_dtype, allreduce_gradients
from ..tree.building import build_levels
from ..tree.protocol import max_tree_level
from . import losses
from .flops import StepFlops, mc_step_flops, vanilla_step_flops
from .guided import NllFn, entry_saliency, guided_prompt_layouts, horizon_saliency
from .layouts import LayoutPrefetcher, VariantLayouts, with_guided
from .packing import PackIndex, build_index

TEACHER_TEMPERATURE = 0.1
"""Softmax temperature of LensNet's distillation of the teacher's saliency: scores and relative
saliencies both live in about a unit range, and at 0.1 a gist 0.3 above another carries e^3 of
its weight, so the KL tells the key's gist from the filler without saturating ``tanh``."""


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


@dataclass
class MCBatch:
    """What the base model's forward needs for one micro-batch, plus what the losses need after."""

    inputs_RWD: torch.Tensor
    """Packed input embeddings, ``R = B * V`` rows of ``W`` entries, the base model's dtype."""
    targets_RW: torch.Tensor
    """Next token after each entry's span; -1 on padding."""
    value_ids_RW: torch.Tensor
    """Token id of each raw entry (nanochat's value embeddings); -1 for gists and padding."""
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None
    """Per-row rotary tables ``[R, W, 1, head_dim/2]`` stitched from ``MCController.positional_caches``,
    or None = the model's own table."""
    layouts: VariantLayouts
    index: PackIndex
    scores_RW: torch.Tensor
    """LensNet utilities of every entry of the random variants (0 on padding and on the baseline
    rows, which LensNet does not score), with grad into LensNet."""
    prev_scores_RW: torch.Tensor
    """Utilities from the previous step's LensNet on the same inputs (no grad), for the KL term
    (zeros when ``--mc_lens_kl_weight`` is 0: the anchor's forward is skipped)."""
    budget: int
    num_levels: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    saliency_RW: torch.Tensor | None = None
    """The teacher's relative peak saliency of every gist entry (``guided.entry_saliency``), the
    target of LensNet's distillation; None without a teacher pass."""
    teacher_pass: bool = False
    """Whether the teacher's full-context pass ran for this batch (its FLOPs count)."""

    @property
    def rows(self) -> int:
        return int(self.inputs_RWD.shape[0])


@dataclass
class MCLosses:
    """``total`` is what to backpropagate: the token loss plus ``weighted`` (the aux losses at their
    ``--mc_*_loss_weight``, the one place the weights are applied; a host whose forward already
    returns the token loss adds ``weighted``, e.g. through the ``extra_loss`` hook); ``terms`` are
    the unweighted parts; ``metrics`` are detached scalars;
    ``pairs`` holds the detached per-pair tensors (``margin`` = LensNet's "i is better" margin,
    ``adv`` = dnll_j - dnll_i, the truth), ``dnll`` ``[B, V-1]`` and ``supervised`` ``[B]`` (the
    sequence's tail has a target >= 0; ``adv`` and ``dnll`` are 0 on the other sequences)."""

    total: torch.Tensor
    weighted: dict[str, torch.Tensor]
    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor]
    pairs: dict[str, torch.Tensor]


class MCController(nn.Module):
    """Owns GistNet, LensNet, their optimizer and the controller state (EMAs, layout generator).

    ``dim``/``head_dim``/``sequence_len`` describe the base model. ``total_steps`` drives the
    curriculum (budget annealed from 80% of T to ``--mc_train_wc_length``).
    """

    def __init__(self, cfg: MCConfig, *, dim: int, head_dim: int, sequence_len: int, total_steps: int,
                 device: torch.device | str = "cpu", rope_base: float = ROPE_BASE) -> None:
        super().__init__()
        self.nets = AuxNets.build(cfg, dim=dim, sequence_len=sequence_len, device=device)
        """GistNet and LensNet with the resolved knobs and dtype: what inference needs of this controller."""
        cfg = self.cfg = self.nets.cfg
        self.dim, self.head_dim, self.sequence_len = dim, head_dim, sequence_len
        self.rope_base = rope_base
        """The base model's rotary base (``context.positions.rope_base``)."""
        self.total_steps = max(1, total_steps)
        self.device = self.nets.device
        self.aux_dtype = self.nets.aux_dtype
        self.gistnet, self.lensnet = self.nets.gistnet, self.nets.lensnet
        self.lens_prev = copy.deepcopy(self.lensnet).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.aux_parameters(), lr=cfg.mc_aux_lr, weight_decay=0.0)
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
        # EMA state of the stability helpers (None until the first step has been seen)
        self.adv_var_ema: torch.Tensor | None = None
        self.budget_ema: torch.Tensor | None = None
        self.steps_done = 0
        self._pending_ema: tuple[torch.Tensor, torch.Tensor] | None = None
        self.positional_caches = PositionalCache()

    # ---- parameters and state --------------------------------------------------------------
    def aux_parameters(self) -> list[nn.Parameter]:
        return [*self.gistnet.parameters(), *self.lensnet.parameters()]

    def controller_state(self) -> dict[str, Any]:
        return {
            "gistnet": self.gistnet.state_dict(),
            "lensnet": self.lensnet.state_dict(),
            "lens_prev": self.lens_prev.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "adv_var_ema": self.adv_var_ema,
            "budget_ema": self.budget_ema,
            "steps_done": self.steps_done,
            "layout_rng": self.layouts.state(),
        }

    def load_controller_state(self, state: dict[str, Any]) -> None:
        self.nets.load_nets(state)
        self.lens_prev.load_state_dict(state["lens_prev"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.adv_var_ema = state["adv_var_ema"]
        self.budget_ema = state["budget_ema"]
        self.steps_done = state["steps_done"]
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

    def teacher_pass_at(self, step: int, teacher_host: bool) -> bool:
        """Whether the teacher's full-context pass runs at ``step``: the host gives one (``nll_fn``) and
        ``step`` is one of every ``--mc_teacher_every``."""
        return teacher_host and step % self.cfg.mc_teacher_every == 0

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
        own layout): see ``_stitched_rotary``.
        """
        cfg = self.cfg
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        B, T = x_BT.shape
        if tuple(y_BT.shape) != (B, T):
            raise ValueError(f"targets {tuple(y_BT.shape)} do not match inputs {(B, T)}")
        if not self.can_compress(T):
            return None
        num_levels = self.length_plan(T).num_levels
        budget = self.budget_at(step, T)
        H = cfg.mc_horizon
        on_policy, teacher, _ = cfg.variant_counts
        teacher_host = nll_fn is not None
        if not self.teacher_pass_at(step, teacher_host):  # its variants are random ones
            nll_fn, teacher = None, 0
        random = self.random_variants(nll_fn is not None)
        next_budget = self.budget_at(step + 1, T) if self._last_length == T else None
        self._last_length = T
        sampled = self.layouts.get(B, 1 + random, T, cfg.block_size, budget, self.recent, next_budget=next_budget,
                                   next_variants=1 + self.random_variants(self.teacher_pass_at(step + 1, teacher_host)))
        timings["layouts_ms"] = _ms(t0)

        t1 = time.perf_counter()
        lod0_BTD = wte(x_BT)
        levels = build_levels(lod0_BTD.to(self.aux_dtype), cfg.block_size, self.gistnet, max_level=num_levels - 1)
        levels[0] = lod0_BTD
        timings["build_ms"] = _ms(t1)

        t2 = time.perf_counter()
        guided: list[list] = [[] for _ in range(B)]
        distil = nll_fn is not None and cfg.mc_lens_teacher_weight > 0
        saliency = None
        if (teacher or distil) and nll_fn is not None:
            saliency = horizon_saliency(nll_fn, lod0_BTD, y_BT, H)
        timings["teacher_ms"] = _ms(t2)
        t2 = time.perf_counter()
        if on_policy or teacher:
            query_BHD = lod0_BTD[:, T - 2 * H:T - H].detach().to(self.aux_dtype)
            max_level = max(1, num_levels - 1)
            guided = guided_prompt_layouts(
                T - H, cfg.block_size, self.prompt_recent, on_policy, teacher,
                focus_config(cfg, budget - H, recent_tokens=self.prompt_recent, max_level=max_level), max_level,
                self._lens_scorer(levels, query_BHD) if on_policy else None, saliency, B)
        layouts = with_guided(sampled, guided, H, ("on-policy",) * on_policy + ("teacher",) * teacher)
        index = build_index(layouts, T, cfg.block_size, num_levels, H, x_BT.device)
        timings["guided_ms"] = _ms(t2)

        t3 = time.perf_counter()
        V = layouts.variants
        rows = EntryRows(np.arange(B * V, dtype=np.int64) // V, layouts.levels_RW, layouts.indices_RW,
                         layouts.starts_RW, layouts.ends_RW)
        # positions are bounded by the model's trained range (sequence_len), whatever this batch's T
        inputs = model_inputs(LevelTable(levels, x_BT), rows, scheme=cfg.mc_position_scheme,
                              sigma_scale=cfg.mc_rope_gist_sigma, head_dim=self.head_dim,
                              sequence_len=self.sequence_len, targets_BT=y_BT,
                              rotary_dtype=activation_dtype(x_BT.device), rope_base=self.rope_base)
        inputs_RWD, targets_RW, cos_sin = inputs.inputs_RWD, inputs.targets_RW, inputs.cos_sin
        assert targets_RW is not None
        timings["packing_ms"] = _ms(t3)

        t4 = time.perf_counter()
        cos_sin = self._stitched_rotary(cos_sin, session_ids, B, V)
        timings["positional_ms"] = _ms(t4)

        t5 = time.perf_counter()
        scores_RW, prev_RW = self._variant_scores(inputs_RWD, lod0_BTD, layouts, index)
        timings["lens_ms"] = _ms(t5)
        timings["controller_ms"] = _ms(t0)
        saliency_RW = (torch.from_numpy(entry_saliency(saliency, layouts)).to(device=x_BT.device)
                       if distil and saliency is not None else None)
        return MCBatch(inputs_RWD, targets_RW, inputs.value_ids_RW, cos_sin, layouts, index, scores_RW, prev_RW,
                       budget, len(levels), timings, saliency_RW, teacher_pass=saliency is not None)

    def _variant_scores(self, inputs_RWD: torch.Tensor, lod0_BTD: torch.Tensor, layouts: VariantLayouts,
                        index: PackIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """LensNet's utilities ``[R, W]`` of the non-baseline variants (the baseline rows hold no gist to
        rank), causally: the entries of the prompt against its last H tokens; and the previous
        step's LensNet's on the same inputs (zeros when the KL term is off: its forward is skipped).
        Both nets read the packed inputs with their gradient and the levels and spans of the batch's
        ``PackIndex``, so they are called here, not through ``context.lens_utilities``."""
        B, T, _ = lod0_BTD.shape
        H, V = self.cfg.mc_horizon, layouts.variants
        R, W = inputs_RWD.shape[:2]
        device = inputs_RWD.device
        rand_N = torch.arange(R, device=device).view(B, V)[:, 1:].reshape(-1)
        entries = inputs_RWD.detach().index_select(0, rand_N).to(self.aux_dtype)
        prompt_RW = index.valid_RW & torch.from_numpy(layouts.ends_RW <= T - H).to(device)
        query_NHD = lod0_BTD[:, T - 2 * H:T - H].detach().to(self.aux_dtype).repeat_interleave(V - 1, dim=0)
        lens_args = (entries, index.levels_RW[rand_N], index.spans_RW[rand_N], query_NHD, prompt_RW[rand_N])
        scores_RW = torch.zeros(R, W, device=device).index_copy(0, rand_N, self.lensnet(*lens_args).float())
        prev_RW = torch.zeros(R, W, device=device)
        if self.cfg.mc_lens_kl_weight > 0:  # the KL anchor costs a forward; skip it when the term is off
            with torch.no_grad():
                prev_RW.index_copy_(0, rand_N, self.lens_prev(*lens_args).float())
        return scores_RW, prev_RW

    def _stitched_rotary(self, cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
                         session_ids: Sequence[Hashable] | None, B: int, V: int
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's rotary override ``[B*V, W, 1, F]``, stitched from ``positional_caches``.

        Every packed row's table is kept there under ``(session_id, variant)`` (the session id of
        sequence ``b`` is ``session_ids[b]``, by default ``b``: a host's micro-batch has no other
        identity), and the override the forward reads is stacked from those rows: the cache is the
        one owner of per-row rotary tables, and a caller that intercepts it sees what trains."""
        ids = list(range(B)) if session_ids is None else list(session_ids)
        if len(ids) != B:
            raise ValueError(f"session_ids has {len(ids)} ids for a batch of {B} sequences")
        if cos_sin is None:
            return None
        keys = [(ids[r // V], r % V) for r in range(B * V)]
        self.positional_caches.reserve(len(keys))
        for r, key in enumerate(keys):
            self.positional_caches.put(key, cos_sin[0][r], cos_sin[1][r])
        return self.positional_caches.stack(keys, width=cos_sin[0].shape[1])

    def _lens_scorer(self, levels: list[torch.Tensor], query_BHD: torch.Tensor):
        """LensNet utilities of one prompt working context per sequence, in one call (on-policy variants),
        through each one's ``focus.lens_view`` as at inference (``context.lens_utilities``)."""
        B = levels[0].shape[0]
        table = LevelTable([level.detach().to(self.aux_dtype) for level in levels], levels[0].new_zeros(B, 1))

        @torch.no_grad()
        def score(wcs: list) -> list[np.ndarray]:
            return lens_utilities(self.lensnet, wcs, query_BHD, source=table, masked=True)

        return score_batch_through_view(score, self.lens_level)

    def compute_losses(self, batch: MCBatch, nll_RW: torch.Tensor) -> MCLosses:
        """All losses from the base model's per-entry NLL ``[R, W]`` (0 where the target is -1).

        Only supervised entries (target >= 0) count: the token loss averages over them, the tail
        NLL of each variant over its supervised tail tokens; a sequence whose last H targets are
        all -1 is left out of ``dnll``, the preference pairs and the advantage scale. Every
        loss stays finite, 0 with its graph, when nothing in the batch is supervised.
        """
        t0 = time.perf_counter()
        cfg = self.cfg
        nll_RW = nll_RW.float()
        supervised_RW = batch.targets_RW >= 0  # padding is -1 too: a subset of valid
        token_loss = losses.mean_over(nll_RW, supervised_RW)
        tails = _tail_verdicts(batch, nll_RW, supervised_RW)
        gist_loss = losses.mean_over(tails.dnll_BN, tails.has_tail_BN)
        lens = self._lens_loss(batch, tails)
        weighted = {"mc_gist": cfg.mc_gist_loss_weight * gist_loss, "mc_lens": cfg.mc_lens_loss_weight * lens.total}
        total = token_loss + weighted["mc_gist"] + weighted["mc_lens"]
        self._pending_ema = (lens.adv_var.detach(), lens.pressure.detach())
        metrics = _loss_metrics(batch, nll_RW, supervised_RW, tails, token_loss, gist_loss, lens)
        batch.timings_ms["losses_ms"] = _ms(t0)
        terms = {"token_loss": token_loss, "gist_loss": gist_loss, "lens_loss": lens.total, "lens_bt": lens.bt,
                 "lens_kl": lens.kl, "lens_budget": lens.budget_pen, "lens_teacher": lens.teacher}
        pairs = {"margin": lens.margin_BP.detach(), "adv": lens.adv_BP, "dnll": tails.dnll_BN.detach(),
                 "supervised": tails.has_tail_B}
        return MCLosses(total, weighted, terms, metrics, pairs)

    def _lens_loss(self, batch: MCBatch, tails: _TailVerdicts) -> _LensTerms:
        """LensNet's loss: Bradley-Terry on the preference pairs (advantages normalised by an EMA of
        their scale, hard negatives kept), a KL anchor to the previous policy, a penalty on moving
        the mean expand pressure away from its EMA, and, where the batch carries the teacher's
        saliency, its listwise distillation."""
        cfg = self.cfg
        index, V = batch.index, batch.layouts.variants
        B = batch.rows // V
        valid = index.valid_RW
        margin_BP = losses.pair_margins(batch.scores_RW.view(B, V, -1)[:, 1:], index.refined_BPW, index.coarser_BPW)
        adv_BP = losses.preference_advantages(tails.dnll_BN.detach())
        pair_ok_BP = tails.has_tail_B[:, None].expand_as(adv_BP)
        # EMA state stays on the device as 0-d tensors: no host sync on the training path. A batch
        # with no supervised pair leaves the EMA as it was; an EMA of 0 (none seen yet) is unset.
        has_pairs = pair_ok_BP.any()
        batch_var = losses.mean_over(adv_BP.square(), pair_ok_BP)
        beta = cfg.mc_lens_adv_norm_beta
        if self.adv_var_ema is None:
            adv_var = batch_var
        else:
            prev = self.adv_var_ema
            blended = torch.where(prev > 0, beta * prev + (1 - beta) * batch_var, batch_var)
            adv_var = torch.where(has_pairs, blended, prev)
        adv_norm_BP = adv_BP / (adv_var + 1e-12).sqrt()
        if adv_BP.numel():
            keep_BP = losses.hard_negative_mask(adv_norm_BP, cfg.mc_lens_hard_negative_ratio, pair_ok_BP)
            bt = losses.bradley_terry_loss(margin_BP, adv_norm_BP, keep_BP, cfg.mc_lens_temperature)
            bt_excess = losses.bradley_terry_excess(margin_BP, adv_BP, keep_BP, cfg.mc_lens_temperature)
        else:  # one random variant per sequence: no pairs to rank
            keep_BP = torch.zeros_like(adv_BP, dtype=torch.bool)
            bt = batch.scores_RW.sum() * 0.0
            bt_excess = bt.detach()
        scored_RW = valid.clone()
        scored_RW.view(B, V, -1)[:, 0] = False  # baseline rows are not scored
        kl = losses.bernoulli_kl(batch.prev_scores_RW, batch.scores_RW, scored_RW)
        pressure = losses.mean_over(batch.scores_RW, valid & (index.levels_RW > 0))
        budget_target = pressure.detach() if self.budget_ema is None else self.budget_ema
        budget_pen = (pressure - budget_target).square()
        if batch.saliency_RW is not None:
            gists_RW = scored_RW & (index.levels_RW > 0) & (batch.saliency_RW.amax(-1, keepdim=True) > 0)
            teacher = losses.listwise_kl(batch.scores_RW, batch.saliency_RW, gists_RW, TEACHER_TEMPERATURE)
        else:
            teacher = batch.scores_RW.sum() * 0.0
        total = (bt + cfg.mc_lens_kl_weight * kl + cfg.mc_lens_budget_smooth_weight * budget_pen
                 + cfg.mc_lens_teacher_weight * teacher)
        return _LensTerms(total, bt, bt_excess, kl, budget_pen, teacher, margin_BP, adv_BP, keep_BP, adv_var, pressure)

    def step_aux(self) -> None:
        """After ``total.backward()``: all-reduce aux grads (DDP), step, refresh the KL snapshot and EMAs."""
        allreduce_gradients(self.aux_parameters())
        # The KL anchor is the policy *before* this update: next step's scores are compared with it.
        self.lens_prev.load_state_dict(self.lensnet.state_dict())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pending = self._pending_ema
        if pending is not None:
            self.adv_var_ema = pending[0]
            beta = self.cfg.mc_lens_budget_smooth_beta
            prev = self.budget_ema
            self.budget_ema = pending[1] if prev is None else beta * prev + (1 - beta) * pending[1]
            self._pending_ema = None
        self.steps_done += 1

    def close(self) -> None:
        self.layouts.close()


@dataclass
class _TailVerdicts:
    """The horizon's NLL per variant: every variant holds the same last H tokens, so one verdict
    per sequence. ``tail_BV[B, V]`` (variant 0 = the baseline), ``has_tail_B[B]`` (some of the
    horizon is supervised), ``dnll_BN[B, V-1]`` = variant minus baseline (0 without a tail)."""

    tail_BV: torch.Tensor
    has_tail_B: torch.Tensor
    has_tail_BN: torch.Tensor
    dnll_BN: torch.Tensor


def _tail_verdicts(batch: MCBatch, nll_RW: torch.Tensor, supervised_RW: torch.Tensor) -> _TailVerdicts:
    index, V = batch.index, batch.layouts.variants
    B = batch.rows // V
    tail_BV = losses.tail_nll(nll_RW, index.tail_RH, supervised_RW).view(B, V)
    has_tail_B = losses.tail_supervised(supervised_RW, index.tail_RH).view(B, V).all(dim=1)
    has_tail_BN = has_tail_B[:, None].expand(B, V - 1)
    dnll_BN = torch.where(has_tail_BN, tail_BV[:, 1:] - tail_BV[:, :1].detach(), tail_BV.new_zeros(()))
    return _TailVerdicts(tail_BV, has_tail_B, has_tail_BN, dnll_BN)


@dataclass
class _LensTerms:
    """LensNet's loss ``total`` and its parts; the pairs' margins and advantages ``[B, P]``; the
    advantage scale and expand pressure the EMAs take after the step."""

    total: torch.Tensor
    bt: torch.Tensor
    bt_excess: torch.Tensor
    kl: torch.Tensor
    budget_pen: torch.Tensor
    teacher: torch.Tensor
    margin_BP: torch.Tensor
    adv_BP: torch.Tensor
    keep_BP: torch.Tensor
    adv_var: torch.Tensor
    pressure: torch.Tensor


@torch.no_grad()
def _loss_metrics(batch: MCBatch, nll_RW: torch.Tensor, supervised_RW: torch.Tensor, tails: _TailVerdicts,
                  token_loss: torch.Tensor, gist_loss: torch.Tensor, lens: _LensTerms) -> dict[str, torch.Tensor]:
    """The step's ``mc/*`` metrics as 0-d tensors (no host sync here; telemetry reads them)."""
    adv_delta = (tails.tail_BV[:, :1] - tails.tail_BV[:, 1:]).reshape(-1)
    adv_delta_ok = tails.has_tail_BN.reshape(-1)
    nan = torch.full_like(adv_delta, float("nan"))
    metrics: dict[str, torch.Tensor] = {
        "token_loss": token_loss.detach(),
        "gist_loss": gist_loss.detach(),
        "lens_loss": lens.bt_excess,
        "lens_total": lens.total.detach(),
        "lens_bt_loss": lens.bt.detach(),
        "lens_kl": lens.kl.detach(),
        "lens_budget_penalty": lens.budget_pen.detach(),
        "lens_teacher_kl": lens.teacher.detach(),
        "delta_nll_h": gist_loss.detach(),
        "adv_delta_mean": losses.mean_over(adv_delta, adv_delta_ok),
        # NaN (no point: telemetry drops it) when no sequence has a supervised tail
        "adv_delta_p95": torch.nanquantile(torch.where(adv_delta_ok, adv_delta, nan), 0.95),
        # margin says "i better"; dnll_i - dnll_j = -adv is negative when i is better
        "preference_corr_mean": losses.correlation(lens.margin_BP.detach(), -lens.adv_BP),
        "pairs_kept": lens.keep_BP.sum().float(),
        "tail_supervised_frac": tails.has_tail_B.float().mean(),
        **_variant_counts(batch),
        "wc_budget": torch.tensor(float(batch.budget)),
    }
    levels_RW = batch.index.levels_RW.masked_fill(~supervised_RW, -1)  # unsupervised entries: no level
    for level, value in losses.level_losses(nll_RW, levels_RW, batch.num_levels).items():
        metrics[f"lod{level}_loss"] = value
    return metrics


def _variant_counts(batch: MCBatch) -> dict[str, torch.Tensor]:
    """Variant rows per kind. ``variants_total`` is what the operating guide reads against
    ``--mc_num_random_variants`` x batch: the random (exploration) rows; the other kinds have their own."""
    counts = batch.layouts.rows_per_kind()
    return {"variants_total": torch.tensor(float(counts["random"])),
            "variants_baseline": torch.tensor(float(counts["baseline"])),
            "variants_onpolicy": torch.tensor(float(counts["on-policy"])),
            "variants_teacher": torch.tensor(float(counts["teacher"])),
            "variant_rows": torch.tensor(float(batch.rows))}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
