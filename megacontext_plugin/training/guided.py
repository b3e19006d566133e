"""Guided working-context variants: the layouts inference produces, found without labels.

A training sequence of ``T`` tokens is read as inference reads a conversation: the **prompt**
``[0, T - H)`` and the **horizon** ``[T - H, T)``, the tokens that would be generated next and
whose loss measures a variant. A guided variant lays out the prompt exactly as inference does
(the coarsest working context of the prompt with its tail ``prompt_tail`` raw, refocused by the
focus allocator within ``budget - H`` entries, re-scored between rounds) and appends the horizon
raw. Two kinds differ only in who scores the entries:

- **on-policy**: LensNet, against the prompt's last H tokens (its query at inference), with the
  run's allocator knobs. The base model learns to read the raw islands inside gists that its
  own focus makes, and LensNet's preference pairs include its own choices.
- **teacher**: how much the horizon's loss depends on each span, from one full-context pass of the
  base model: ``|sum_d grad_d * x_d|`` of the horizon NLL with respect to each LOD0 embedding
  (gradient times input), summed over the entry's span, as a share of what the coarsest layout
  holds in gists. The horizon is the sequence's own next tokens: no label, no knowledge of where
  an answer is. The teacher expands only gists holding at least ``TEACHER_SHARE`` of it (half that
  for the 2nd teacher variant, and so on), so it drills into what matters instead of spending the
  budget at the top level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ..context.working_context import WorkingContext
from ..focus import FocusAllocator, FocusConfig

TEACHER_SHARE = 0.25
"""The first teacher variant expands a gist holding at least this share of the saliency in gists
(the second half of it, and so on)."""

BatchScorer = Callable[[list[WorkingContext]], list[np.ndarray]]
"""Utilities ``[W_b]`` of one working context per sequence, scored in one call."""

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``nll_fn(inputs[B, T, D], targets[B, T]) -> nll[B, T]``: the base model's full-context
per-token NLL on given LOD0 embeddings (0 where the target is -1)."""


def refocus_prompts(starts: list[WorkingContext], score: BatchScorer, config: FocusConfig,
                    rounds: int) -> list[WorkingContext]:
    """``rounds`` refocus calls of one allocator per sequence (``config.iterations`` is taken as 1:
    the batch is re-scored between rounds in one call of ``score``)."""
    config = dataclasses.replace(config, iterations=1)
    allocators = [FocusAllocator(config) for _ in starts]
    wcs = list(starts)
    for _ in range(rounds):
        utilities = score(wcs)
        wcs = [alloc.refocus(wc, lambda _wc, u=u: u)[0] for alloc, wc, u in zip(allocators, wcs, utilities,
                                                                                   strict=True)]
    return wcs


def horizon_saliency(nll_fn: NllFn, lod0_BTD: torch.Tensor, y_BT: torch.Tensor, horizon: int) -> np.ndarray:
    """``saliency[B, T]`` (float64 numpy, >= 0): ``|grad . x|`` of the summed horizon NLL with respect
    to each token's embedding. Only the embeddings get a gradient: the base model's own ``.grad``
    is untouched (``torch.autograd.grad`` with the embeddings as the only input)."""
    emb_BTD = lod0_BTD.detach().requires_grad_(True)
    with torch.enable_grad():
        nll_BT = nll_fn(emb_BTD, y_BT)
        supervised_BH = (y_BT[:, -horizon:] >= 0).to(nll_BT.dtype)
        loss = (nll_BT[:, -horizon:] * supervised_BH).sum()
        if not loss.requires_grad:
            return np.zeros(tuple(y_BT.shape), dtype=np.float64)
        (grad_BTD,) = torch.autograd.grad(loss, emb_BTD)
    return (grad_BTD.float() * emb_BTD.detach().float()).sum(-1).abs().double().cpu().numpy()


def teacher_scorer(saliency_BT: np.ndarray, start: WorkingContext, threshold: float) -> BatchScorer:
    """Utilities from saliency: each gist's share of the saliency of everything ``start`` (the
    coarsest layout) holds in gists; gists below ``threshold`` get 0 (never expanded), raw entries 0.
    A fixed denominator: once what matters is raw, the filler left in gists stays below it."""
    cumsum_BT1 = np.concatenate([np.zeros((saliency_BT.shape[0], 1)), np.cumsum(saliency_BT, axis=1)], axis=1)
    in_gists = start.levels > 0
    total_B = (cumsum_BT1[:, start.ends[in_gists]] - cumsum_BT1[:, start.starts[in_gists]]).sum(axis=1)

    def score(wcs: list[WorkingContext]) -> list[np.ndarray]:
        out = []
        for b, wc in enumerate(wcs):
            share_W = (cumsum_BT1[b, wc.ends] - cumsum_BT1[b, wc.starts]) / max(float(total_B[b]), 1e-30)
            u_W = np.where((wc.levels > 0) & (share_W >= threshold), np.minimum(share_W, 1.0), 0.0)
            out.append(u_W.astype(np.float32))
        return out

    return score


def teacher_config(config: FocusConfig) -> FocusConfig:
    """The run's allocator, greedy and expanding only (the teacher's scores are shares in [0, 1];
    its threshold is applied by ``teacher_scorer``), with no hysteresis within one layout."""
    return dataclasses.replace(config, type="greedy", expand_threshold=0.0, collapse_threshold=1.0,
                               soft_max_length=None, cooldown=0)


def guided_prompt_layouts(prompt_len: int, block_size: int, prompt_tail: int, on_policy: int, teacher: int,
                          config: FocusConfig, rounds: int, lens_score: BatchScorer | None,
                          saliency_BT: np.ndarray | None, batch: int) -> list[list[WorkingContext]]:
    """Per sequence: ``on_policy`` LensNet layouts then ``teacher`` saliency layouts of the prompt.

    On-policy variants after the first start from the same coarsest context with the stochastic
    greedy allocator (seeded per variant), so they explore around LensNet's choice.
    """
    start = WorkingContext.coarsest(prompt_len, block_size, prompt_tail)
    out: list[list[WorkingContext]] = [[] for _ in range(batch)]
    for k in range(on_policy):
        assert lens_score is not None
        cfg_k = config if k == 0 else dataclasses.replace(config, type="stochastic_greedy", seed=config.seed + k)
        for b, wc in enumerate(refocus_prompts([start] * batch, lens_score, cfg_k, rounds)):
            out[b].append(wc)
    for k in range(teacher):
        assert saliency_BT is not None
        score = teacher_scorer(saliency_BT, start, threshold=TEACHER_SHARE / 2**k)
        for b, wc in enumerate(refocus_prompts([start] * batch, score, teacher_config(config), rounds)):
            out[b].append(wc)
    return out
