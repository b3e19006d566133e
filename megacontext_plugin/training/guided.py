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
  (gradient times input); an entry's score is the peak over the tokens it covers, relative to the
  peak over what the coarsest layout holds in gists. The horizon is the sequence's own next
  tokens: no label, no knowledge of where an answer is. The teacher expands only gists reaching
  ``TEACHER_SHARE`` of the peak (half that for the 2nd teacher variant, and so on), so it drills
  into what matters instead of spending the budget at the top level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ..context.working_context import WorkingContext
from ..focus import FocusAllocator, FocusConfig, start_layout
from .layouts import VariantLayouts

TEACHER_SHARE = 0.5
"""The first teacher variant expands a gist whose most salient token reaches this fraction of the
peak saliency in gists (the second variant half of it, and so on)."""

BatchScorer = Callable[[list[WorkingContext]], list[np.ndarray]]
"""Utilities ``[W_b]`` of one working context per sequence, scored in one call."""

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``nll_fn(inputs[B, T, D], targets[B, T]) -> nll[B, T']``: the base model's full-context
per-token NLL on given LOD0 embeddings (0 where the target is -1) of the last ``T'`` positions,
``H <= T' <= T``: only the horizon's is read, so a host may skip the output head elsewhere
(``nets.output_head.head_on_last``)."""


def refocus_prompts(starts: list[WorkingContext], score: BatchScorer, config: FocusConfig,
                    calls: int) -> list[WorkingContext]:
    """``calls`` refocus calls of one allocator per sequence, each as at inference: ``config.iterations``
    rounds, then the context pass. Each round is one single-round ``refocus`` of every sequence, so
    that the batch is re-scored between rounds in one call of ``score``; the context pass is
    deferred to a call's last round."""
    rounds = config.iterations
    config = dataclasses.replace(config, iterations=1)
    allocators = [FocusAllocator(config) for _ in starts]
    wcs = list(starts)
    for r in range(calls * rounds):
        utilities = score(wcs)
        last = r % rounds == rounds - 1
        wcs = [alloc.refocus(wc, lambda _wc, u=u: u, context_pass=last)[0]
               for alloc, wc, u in zip(allocators, wcs, utilities, strict=True)]
    return wcs


def horizon_saliency(nll_fn: NllFn, lod0_BTD: torch.Tensor, y_BT: torch.Tensor, horizon: int) -> np.ndarray:
    """``saliency[B, T]`` (float64 numpy, >= 0): ``|grad . x|`` of the summed horizon NLL with respect
    to each token's embedding. Only the embeddings get a gradient: the base model's own ``.grad``
    is untouched (``torch.autograd.grad`` with the embeddings as the only input)."""
    emb_BTD = lod0_BTD.detach().requires_grad_(True)
    with torch.enable_grad():
        nll_BT = nll_fn(emb_BTD, y_BT)  # [B, T'] with T' >= horizon
        supervised_BH = (y_BT[:, -horizon:] >= 0).to(nll_BT.dtype)
        loss = (nll_BT[:, -horizon:] * supervised_BH).sum()
        if not loss.requires_grad:
            return np.zeros(tuple(y_BT.shape), dtype=np.float64)
        (grad_BTD,) = torch.autograd.grad(loss, emb_BTD)
    return (grad_BTD.float() * emb_BTD.detach().float()).sum(-1).abs().double().cpu().numpy()


def entry_saliency(saliency_BT: np.ndarray, layouts: VariantLayouts) -> np.ndarray:
    """``target[R, W]`` (float32): each gist entry's peak saliency (the largest of the tokens it
    covers, as ``teacher_scorer``) relative to the largest among its row's gists, so 1 for the row's
    most salient gist; 0 for raw entries, padding and rows whose gists are not salient at all.
    Row ``r`` lays out sequence ``r // V``; every row tiles ``[0, T)`` in order, so one
    ``maximum.reduceat`` over the rows laid end to end finds every entry's peak."""
    T = saliency_BT.shape[1]
    V = layouts.variants
    valid_RW = layouts.valid_RW
    rows_N, cols_N = np.nonzero(valid_RW)  # row-major: each row's entries in order
    flat = np.repeat(saliency_BT, V, axis=0).reshape(-1)
    peak_RW = np.zeros(valid_RW.shape, dtype=np.float64)
    if rows_N.size:
        peak_RW[rows_N, cols_N] = np.maximum.reduceat(flat, rows_N * T + layouts.starts_RW[rows_N, cols_N])
    peak_RW = np.where(valid_RW & (layouts.levels_RW > 0), peak_RW, 0.0)
    top_R = peak_RW.max(axis=1, keepdims=True)
    return np.divide(peak_RW, top_R, out=np.zeros_like(peak_RW), where=top_R > 0).astype(np.float32)


def teacher_scorer(saliency_BT: np.ndarray, start: WorkingContext, threshold: float) -> BatchScorer:
    """Utilities from saliency: each gist's peak (the largest saliency of a token it covers) relative
    to the peak of everything ``start`` (the coarsest layout) holds in gists; gists below
    ``threshold`` get 0 (never expanded), raw entries 0. The peak, not the sum: the node holding the
    most salient token keeps utility 1 at every level, so the allocator drills straight down to it
    (a sum spreads over the children and stops one level down); the fixed denominator lets the
    teacher stop once what matters is raw, instead of expanding the filler left in gists."""
    gist_tokens = np.concatenate([np.arange(s, e) for s, e in zip(start.starts[start.levels > 0],
                                                                  start.ends[start.levels > 0], strict=True)]
                                 + [np.zeros(0, dtype=np.int64)])
    peak_B = saliency_BT[:, gist_tokens].max(axis=1) if gist_tokens.size else np.zeros(len(saliency_BT))

    def score(wcs: list[WorkingContext]) -> list[np.ndarray]:
        out = []
        for b, wc in enumerate(wcs):
            if len(wc) == 0 or peak_B[b] <= 0:
                out.append(np.zeros(len(wc), dtype=np.float32))
                continue
            entry_peak_W = np.maximum.reduceat(saliency_BT[b, :wc.num_tokens], wc.starts) / peak_B[b]
            u_W = np.where((wc.levels > 0) & (entry_peak_W >= threshold), np.minimum(entry_peak_W, 1.0), 0.0)
            out.append(u_W.astype(np.float32))
        return out

    return score


def teacher_config(config: FocusConfig, k: int = 0) -> FocusConfig:
    """The run's allocator as the ``k``-th teacher: expanding only (the teacher's scores are peaks in
    [0, 1], its threshold applied by ``teacher_scorer``), one anchor per round (with its neighbours)
    so that it drills best-first down to the most salient token before spending the budget on the
    next one, no hysteresis within one layout; greedy for the first, stochastic greedy among the top
    few for the others, so that teacher variants differ. Even ``k`` opens the run's neighbours with
    each anchor, odd ``k`` none: where a long history leaves no room for the words around a raw
    island, inference's allocator opens the island alone, and the reader must have read such
    islands in training (D27)."""
    neighbours = config.expand_neighbours if k % 2 == 0 else 0
    return dataclasses.replace(config, type="greedy" if k == 0 else "stochastic_greedy", seed=config.seed + k,
                               sample_top_k=4, sample_temperature=0.1, expand_threshold=0.0,
                               collapse_threshold=1.0, soft_max_length=None, cooldown=0,
                               expand_neighbours=neighbours, max_replacements=1 + neighbours)


def guided_prompt_layouts(prompt_len: int, block_size: int, prompt_tail: int, on_policy: int, teacher: int,
                          config: FocusConfig, rounds: int, lens_score: BatchScorer | None,
                          saliency_BT: np.ndarray | None, batch: int) -> list[list[WorkingContext]]:
    """Per sequence: ``on_policy`` LensNet layouts then ``teacher`` saliency layouts of the prompt.

    ``rounds`` is the on-policy refocus calls, each of ``config.iterations`` allocator rounds as at
    inference (one batched LensNet scoring per round).

    Every variant starts from ``focus.start_layout`` (the coarsest layout), as the evaluation
    does; on-policy variants after the first
    use the stochastic greedy allocator (seeded per variant), so they explore around LensNet's choice.
    """
    start = start_layout(prompt_len, block_size, prompt_tail)
    out: list[list[WorkingContext]] = [[] for _ in range(batch)]
    for k in range(on_policy):
        assert lens_score is not None
        cfg_k = config if k == 0 else dataclasses.replace(config, type="stochastic_greedy", seed=config.seed + k)
        for b, wc in enumerate(refocus_prompts([start] * batch, lens_score, cfg_k, rounds)):
            out[b].append(wc)
    drill_rounds = config.budget // (block_size - 1) + 1  # enough single expansions to fill the budget
    for k in range(teacher):
        assert saliency_BT is not None
        score = teacher_scorer(saliency_BT, start, threshold=TEACHER_SHARE / 2**k)
        drill = dataclasses.replace(teacher_config(config, k), iterations=drill_rounds)
        for b, wc in enumerate(refocus_prompts([start] * batch, score, drill, 1)):
            out[b].append(wc)
    return out
