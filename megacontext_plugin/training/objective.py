"""The controller's objective: every loss of one micro-batch from the base model's per-entry NLL.

The token loss over every supervised entry of all variants (the model learns to read gists), the
gist substitutability loss (tail NLL of random variants relative to the baseline, over supervised
tail tokens; trains GistNet through the gists) and the LensNet preference loss (see ``losses``).
Sequences whose tail has no supervised target give no gist or preference signal. The EMAs LensNet's
loss reads are the aux trainer's (``AuxTrainer``): they come in as arguments, and the batch's
values for them go back out, so that nothing here holds state across batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MCConfig
from . import losses
from .batching import MCBatch

TEACHER_TEMPERATURE = 0.1
"""Softmax temperature of LensNet's distillation of the teacher's saliency: scores and relative
saliencies both live in about a unit range, and at 0.1 a gist 0.3 above another carries e^3 of
its weight, so the KL tells the key's gist from the filler without saturating ``tanh``."""


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


def compute_losses(cfg: MCConfig, batch: MCBatch, nll_RW: torch.Tensor, adv_var_ema: torch.Tensor | None,
                   budget_ema: torch.Tensor | None) -> tuple[MCLosses, tuple[torch.Tensor, torch.Tensor]]:
    """All losses from the base model's per-entry NLL ``[R, W]`` (0 where the target is -1), given
    the EMAs of the advantage scale and the expand pressure (None: none seen yet); with them, the
    batch's advantage scale and mean expand pressure, for those EMAs (``AuxTrainer.observe``).

    Only supervised entries (target >= 0) count: the token loss averages over them, the tail
    NLL of each variant over its supervised tail tokens; a sequence whose last H targets are
    all -1 is left out of ``dnll``, the preference pairs and the advantage scale. Every
    loss stays finite, 0 with its graph, when nothing in the batch is supervised.
    """
    nll_RW = nll_RW.float()
    supervised_RW = batch.targets_RW >= 0  # padding is -1 too: a subset of valid
    token_loss = losses.mean_over(nll_RW, supervised_RW)
    tails = _tail_verdicts(batch, nll_RW, supervised_RW)
    gist_loss = losses.mean_over(tails.dnll_BN, tails.has_tail_BN)
    lens = _lens_loss(cfg, batch, tails, adv_var_ema, budget_ema)
    weighted = {"mc_gist": cfg.mc_gist_loss_weight * gist_loss, "mc_lens": cfg.mc_lens_loss_weight * lens.total}
    total = token_loss + weighted["mc_gist"] + weighted["mc_lens"]
    metrics = _loss_metrics(batch, nll_RW, supervised_RW, tails, token_loss, gist_loss, lens)
    terms = {"token_loss": token_loss, "gist_loss": gist_loss, "lens_loss": lens.total, "lens_bt": lens.bt,
             "lens_kl": lens.kl, "lens_budget": lens.budget_pen, "lens_teacher": lens.teacher}
    pairs = {"margin": lens.margin_BP.detach(), "adv": lens.adv_BP, "dnll": tails.dnll_BN.detach(),
             "supervised": tails.has_tail_B}
    return MCLosses(total, weighted, terms, metrics, pairs), (lens.adv_var, lens.pressure)


def _lens_loss(cfg: MCConfig, batch: MCBatch, tails: _TailVerdicts, adv_var_ema: torch.Tensor | None,
               budget_ema: torch.Tensor | None) -> _LensTerms:
    """LensNet's loss: Bradley-Terry on the preference pairs (advantages normalised by an EMA of
    their scale, hard negatives kept), a KL anchor to the previous policy, a penalty on moving
    the mean expand pressure away from its EMA, and, where the batch carries the teacher's
    saliency, its listwise distillation."""
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
    if adv_var_ema is None:
        adv_var = batch_var
    else:
        blended = torch.where(adv_var_ema > 0, beta * adv_var_ema + (1 - beta) * batch_var, batch_var)
        adv_var = torch.where(has_pairs, blended, adv_var_ema)
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
    budget_target = pressure.detach() if budget_ema is None else budget_ema
    budget_pen = (pressure - budget_target).square()
    if batch.saliency_RW is not None:
        gists_RW = scored_RW & (index.levels_RW > 0) & (batch.saliency_RW.amax(-1, keepdim=True) > 0)
        teacher = losses.listwise_kl(batch.scores_RW, batch.saliency_RW, gists_RW, TEACHER_TEMPERATURE)
    else:
        teacher = batch.scores_RW.sum() * 0.0
    total = (bt + cfg.mc_lens_kl_weight * kl + cfg.mc_lens_budget_smooth_weight * budget_pen
             + cfg.mc_lens_teacher_weight * teacher)
    return _LensTerms(total, bt, bt_excess, kl, budget_pen, teacher, margin_BP, adv_BP, keep_BP, adv_var, pressure)


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

