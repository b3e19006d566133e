"""The controller's losses, as pure functions of per-entry NLL and LensNet scores.

Sign conventions (used by the metrics too):

- ``dnll[B, V-1]``: tail NLL (mean over the last H tokens, raw in every variant, whose target
  is not -1) of each random variant minus that of the recency baseline. Negative = the
  variant's gists help. A sequence whose last H targets are all -1 gives no signal (0).
- LensNet utility ``u`` of an entry in [-1, 1]: positive = worth expanding (compressing it
  hurts), negative = cheap to keep collapsed.
- Preference pairs ``(i, j)`` of random variants of one sequence: advantage
  ``adv = dnll_j - dnll_i`` (positive = i is better), normalised by an EMA of its scale. Only the
  entries where the variants differ enter the comparison: the gists of ``j`` that ``i`` shows in
  finer detail (``refined``) and the gists of ``i`` that ``j`` shows finer (``coarser``).
  LensNet's predicted margin is ``m_ij = sum(u_j over refined) - sum(u_i over coarser)``: i is
  better when what only j keeps compressed was worth expanding. The Bradley–Terry model
  ``P(i > j) = sigmoid(m_ij / temperature)`` is fitted to the soft target
  ``sigmoid(adv_normalised)``. Shared entries, and the finer children that an expansion adds,
  never enter, so the margin has no bias towards variants with more or fewer gists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (keeping the graph) when the mask is empty."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def tail_nll(nll_RW: torch.Tensor, tail_RH: torch.Tensor, supervised_RW: torch.Tensor | None = None) -> torch.Tensor:
    """``[R]``: mean NLL of each row's last H real entries; with ``supervised_RW`` (True where the
    target is >= 0) only over the supervised ones, 0 for a row with none (see ``tail_supervised``)."""
    nll_RH = nll_RW.gather(1, tail_RH)
    if supervised_RW is None:
        return nll_RH.mean(dim=1)
    m_RH = supervised_RW.gather(1, tail_RH).to(nll_RH.dtype)
    return (nll_RH * m_RH).sum(dim=1) / m_RH.sum(dim=1).clamp_min(1.0)


def tail_supervised(supervised_RW: torch.Tensor, tail_RH: torch.Tensor) -> torch.Tensor:
    """``[R]`` bool: the row's last H entries hold at least one supervised target (chat SFT masks
    padding and the user's turns with -1: a row whose tail is all masked measures nothing)."""
    return supervised_RW.gather(1, tail_RH).any(dim=1)


def level_losses(nll_RW: torch.Tensor, levels_RW: torch.Tensor, num_levels: int) -> dict[int, torch.Tensor]:
    """Mean NLL of the entries of each level 0..num_levels-1 (detached; NaN for a level with no
    entry in the batch). One scatter, no host sync."""
    with torch.no_grad():
        weight = (levels_RW >= 0).float().reshape(-1)
        lv = levels_RW.clamp_min(0).reshape(-1)
        sums = weight.new_zeros(num_levels).index_add_(0, lv, nll_RW.float().reshape(-1) * weight)
        counts = weight.new_zeros(num_levels).index_add_(0, lv, weight)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return {level: means[level] for level in range(num_levels)}


def pair_margins(scores_BNW: torch.Tensor, refined_BPW: torch.Tensor, coarser_BPW: torch.Tensor) -> torch.Tensor:
    """``m[B, P]``: LensNet's margin for "i is better than j" on the entries where they differ.

    ``scores_BNW`` are the utilities of the random variants (``N = V - 1``) of each sequence.
    """
    i, j = pair_indices(scores_BNW.shape[1], scores_BNW.device)
    gain_j = (scores_BNW[:, j] * refined_BPW.to(scores_BNW.dtype)).sum(-1)
    gain_i = (scores_BNW[:, i] * coarser_BPW.to(scores_BNW.dtype)).sum(-1)
    return gain_j - gain_i


def pair_indices(num_random: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``i < j`` among ``num_random`` random variants (columns of ``dnll``)."""
    i, j = torch.triu_indices(num_random, num_random, offset=1, device=device)
    return i, j


def preference_advantages(dnll_BN: torch.Tensor) -> torch.Tensor:
    """``adv[B, P] = dnll[:, j] - dnll[:, i]`` over all pairs (positive = i is the better variant)."""
    i, j = pair_indices(dnll_BN.shape[1], dnll_BN.device)
    return dnll_BN[:, j] - dnll_BN[:, i]


def hard_negative_mask(adv_BP: torch.Tensor, keep_ratio: float, mask_BP: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``keep_ratio`` fraction of pairs with the largest ``|adv|`` (at least one).

    With ``mask_BP`` only masked pairs are candidates and the fraction is of their number (none
    kept when none is masked); the count stays on the device (no host sync).
    """
    if mask_BP is None:
        flat = adv_BP.abs().reshape(-1)
        keep = max(1, round(keep_ratio * flat.numel()))
        if keep >= flat.numel():
            return torch.ones_like(adv_BP, dtype=torch.bool)
        threshold = flat.topk(keep).values[-1]
        return adv_BP.abs() >= threshold
    if adv_BP.numel() == 0:
        return torch.zeros_like(adv_BP, dtype=torch.bool)
    mag_BP = adv_BP.abs()
    ranked = torch.where(mask_BP, mag_BP, torch.full_like(mag_BP, -1.0)).reshape(-1).sort(descending=True).values
    # round half to even on a float64 count, exactly as Python's round() above
    keep = (mask_BP.sum().double() * keep_ratio).round().clamp(1, ranked.numel()).long()
    threshold = ranked.gather(0, (keep - 1).reshape(1)).squeeze(0)
    return mask_BP & (mag_BP >= threshold)


def bradley_terry_loss(
    margin_BP: torch.Tensor, adv_norm_BP: torch.Tensor, keep_BP: torch.Tensor, temperature: float
) -> torch.Tensor:
    """BCE between ``sigmoid(margin / T)`` and the soft target ``sigmoid(adv_norm)`` over kept pairs."""
    logits_BP = margin_BP / temperature
    target_BP = torch.sigmoid(adv_norm_BP.detach())
    loss_BP = F.binary_cross_entropy_with_logits(logits_BP, target_BP, reduction="none")
    return mean_over(loss_BP, keep_BP)


def bradley_terry_excess(margin_BP: torch.Tensor, adv_BP: torch.Tensor, keep_BP: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """How far LensNet's pair probabilities ``sigmoid(margin / T)`` are from the ΔNLL's own
    Bradley–Terry probabilities ``sigmoid(adv)`` (the advantage in nats, not normalised): the mean
    ``KL(Bern(sigmoid(adv)) || Bern(sigmoid(margin / T)))`` over kept pairs. 0 exactly when they
    agree; pairs whose variants are equally good (adv near 0) add little unless LensNet is confident
    about them. The operating guide's ``mc/lens_loss``."""
    adv = adv_BP.detach().float()
    target_BP = torch.sigmoid(adv)
    floor_BP = F.binary_cross_entropy_with_logits(adv, target_BP, reduction="none")  # the targets' entropy
    loss_BP = F.binary_cross_entropy_with_logits(margin_BP.detach().float() / temperature, target_BP,
                                                 reduction="none")
    return mean_over((loss_BP - floor_BP).clamp_min(0.0), keep_BP)


def listwise_kl(scores_RW: torch.Tensor, target_RW: torch.Tensor, mask_RW: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(target / T) || softmax(scores / T))`` over each row's masked
    entries; rows with fewer than two masked entries are left out (0 with the graph when none is
    left). Zero exactly when ``scores = target + c`` per row: it fixes the ranks and the gaps of the
    scores, not their level (the thresholds' business, left to the preference loss)."""
    fill = -1e4  # finite: a fully masked row stays NaN-free before it is left out
    log_q = torch.log_softmax((scores_RW.float() / temperature).masked_fill(~mask_RW, fill), dim=-1)
    log_p = torch.log_softmax((target_RW.float() / temperature).masked_fill(~mask_RW, fill), dim=-1)
    p = log_p.exp() * mask_RW
    kl_R = (p * (log_p - log_q).masked_fill(~mask_RW, 0.0)).sum(-1)
    return mean_over(kl_R, mask_RW.sum(-1) >= 2)


def bernoulli_kl(prev_RW: torch.Tensor, now_RW: torch.Tensor, mask_RW: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(Bern(p_prev) || Bern(p_now))`` with ``p = (u + 1) / 2``, over masked entries."""
    eps = 1e-4
    p = ((prev_RW.detach() + 1) / 2).clamp(eps, 1 - eps)
    q = ((now_RW + 1) / 2).clamp(eps, 1 - eps)
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    return mean_over(kl, mask_RW)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two equally shaped tensors (NaN when either has no spread); no host sync."""
    a = a.reshape(-1).float() - a.float().mean()
    b = b.reshape(-1).float() - b.float().mean()
    den = (a.square().sum() * b.square().sum()).sqrt()
    return torch.where(den > 1e-12, (a * b).sum() / den.clamp_min(1e-12), torch.full_like(den, float("nan")))
