"""One micro-batch's forward work for the controller: trees, guided variants, packed inputs, scores.

``MCController.process_batch`` decides what a batch is built at (the length plan, the
curriculum's budget, whether the teacher's pass runs) and samples its random layouts;
``BatchBuilder.build`` does the rest with the aux nets: LOD0 embeddings from the base model's
``wte``, every row's tree at once (``build_levels``: one GistNet call per level), the teacher's
saliency and the guided layouts, the packed inputs ``[B*V, W, D]``, targets and positions by
one gather each, the rows' rotary tables (kept in ``positional_caches``) and LensNet's scores of
every entry, with the KL anchor's beside them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..config import MCConfig
from ..context import EntryRows, LevelTable, lens_utilities, model_inputs
from ..context.positions import PositionalCache
from ..focus import focus_config, score_batch_through_view
from ..nets import AuxNets, activation_dtype
from ..tree.building import build_levels
from .guided import NllFn, entry_saliency, guided_prompt_layouts, horizon_saliency
from .layouts import VariantLayouts, with_guided
from .packing import PackIndex, build_index
from .timing import Timings


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
    """Milliseconds per phase (``timing.Timings``, the ``mc_timing`` keys); ``compute_losses`` adds
    ``losses_ms``."""
    saliency_RW: torch.Tensor | None = None
    """The teacher's relative peak saliency of every gist entry (``guided.entry_saliency``), the
    target of LensNet's distillation; None without a teacher pass."""
    teacher_pass: bool = False
    """Whether the teacher's full-context pass ran for this batch (its FLOPs count)."""

    @property
    def rows(self) -> int:
        return int(self.inputs_RWD.shape[0])


class BatchBuilder:
    """Builds ``MCBatch``es with ``nets`` and LensNet's KL anchor ``lens_prev`` (both the aux
    trainer's: read here, stepped there). Owns the rows' rotary tables (``positional_caches``).

    ``head_dim``, ``sequence_len`` and ``rope_base`` describe the base model; ``lens_level`` is the
    coarsest level LensNet scores (``MCController.lens_level``).
    """

    def __init__(self, nets: AuxNets, lens_prev: nn.Module, *, head_dim: int, sequence_len: int, rope_base: float,
                 lens_level: int) -> None:
        self.cfg: MCConfig = nets.cfg
        self.gistnet, self.lensnet, self.lens_prev = nets.gistnet, nets.lensnet, lens_prev
        self.aux_dtype = nets.aux_dtype
        self.head_dim, self.sequence_len, self.rope_base = head_dim, sequence_len, rope_base
        self.prompt_recent = nets.prompt_recent
        self.lens_level = lens_level
        self.positional_caches = PositionalCache()

    def build(self, x_BT: torch.Tensor, y_BT: torch.Tensor, wte: nn.Module, sampled: VariantLayouts, *,
              budget: int, num_levels: int, nll_fn: NllFn | None, session_ids: Sequence[Hashable] | None,
              timings: Timings) -> MCBatch:
        """The batch of ``x_BT``, ``y_BT`` (``MCController.process_batch``) at ``budget`` entries per
        variant over ``num_levels`` tree levels. ``sampled``: the baseline and random columns; the
        guided columns go between them. ``nll_fn`` None: no teacher pass (the teacher's columns are
        among ``sampled``). Times the build, teacher, guided, packing, positional and lens phases."""
        cfg = self.cfg
        B, T = x_BT.shape
        H = cfg.mc_horizon
        on_policy, teacher, _ = cfg.variant_counts
        if nll_fn is None:
            teacher = 0
        with timings.phase("build"):
            lod0_BTD = wte(x_BT)
            levels = build_levels(lod0_BTD.to(self.aux_dtype), cfg.block_size, self.gistnet, max_level=num_levels - 1)
            levels[0] = lod0_BTD

        distil = nll_fn is not None and cfg.mc_lens_teacher_weight > 0
        saliency = None
        with timings.phase("teacher"):
            if (teacher or distil) and nll_fn is not None:
                saliency = horizon_saliency(nll_fn, lod0_BTD, y_BT, H)

        with timings.phase("guided"):
            guided: list[list] = [[] for _ in range(B)]
            if on_policy or teacher:
                query_BHD = lod0_BTD[:, T - 2 * H:T - H].detach().to(self.aux_dtype)
                max_level = max(1, num_levels - 1)
                guided = guided_prompt_layouts(
                    T - H, cfg.block_size, self.prompt_recent, on_policy, teacher,
                    focus_config(cfg, budget - H, recent_tokens=self.prompt_recent, max_level=max_level), max_level,
                    self._lens_scorer(levels, query_BHD) if on_policy else None, saliency, B)
            layouts = with_guided(sampled, guided, H, ("on-policy",) * on_policy + ("teacher",) * teacher)
            index = build_index(layouts, T, cfg.block_size, num_levels, H, x_BT.device)

        with timings.phase("packing"):
            V = layouts.variants
            rows = EntryRows(np.arange(B * V, dtype=np.int64) // V, layouts.levels_RW, layouts.indices_RW,
                             layouts.starts_RW, layouts.ends_RW)
            # positions are bounded by the model's trained range (sequence_len), whatever this batch's T
            inputs = model_inputs(LevelTable(levels, x_BT), rows, scheme=cfg.mc_position_scheme,
                                  sigma_scale=cfg.mc_rope_gist_sigma, head_dim=self.head_dim,
                                  sequence_len=self.sequence_len, targets_BT=y_BT,
                                  rotary_dtype=activation_dtype(x_BT.device), rope_base=self.rope_base)
            inputs_RWD, targets_RW = inputs.inputs_RWD, inputs.targets_RW
            assert targets_RW is not None

        with timings.phase("positional"):
            cos_sin = self._stitched_rotary(inputs.cos_sin, session_ids, B, V)

        with timings.phase("lens"):
            scores_RW, prev_RW = self._variant_scores(inputs_RWD, lod0_BTD, layouts, index)
        saliency_RW = (torch.from_numpy(entry_saliency(saliency, layouts)).to(device=x_BT.device)
                       if distil and saliency is not None else None)
        return MCBatch(inputs_RWD, targets_RW, inputs.value_ids_RW, cos_sin, layouts, index, scores_RW, prev_RW,
                       budget, len(levels), timings.ms, saliency_RW, teacher_pass=saliency is not None)

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

