"""Scoring an arm on the evaluation's documents: passkey and recall exact match, NLL@H, and LensNet's
ranking of the gists against the true benefit of expanding each (with its two references)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..context import LevelTable
from ..context.working_context import WorkingContext
from ..data import metrics, tasks
from .arms import ArmRunner, covering_gists
from .codec import BYTES, Codec
from .documents import answer_span, rng, twin_passkey

LENS_KEYS = {"rho": "lens_rank_corr", "top1": "lens_top1", "retest": "lens_rank_retest",
             "key_oracle": "lens_rank_key_oracle"}
"""The result's key of each ``LensRanking`` field (each also ``KEY_by_length``)."""


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant or n < 2."""
    x, y = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.arange(v.size, dtype=np.float64)
    for value in np.unique(v):  # average ranks of ties
        tie = v == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


Predictor = Any
"""Anything with ``predict(arm, prefix_ids, cont_ids) -> Prediction`` (``ArmRunner`` or a test double)."""


def score_passkey(runner: Predictor, arm: str, docs: Sequence[tasks.PasskeySample], codec: Codec = BYTES
                  ) -> tuple[metrics.PasskeyScore, list[float], list[dict[str, float]]]:
    """Exact/per-digit scores; per-document exact (1/0) in order; the arm's per-document info."""
    preds, answers, exact, infos = [], [], [], []
    for doc in docs:
        cont, n_answer = codec.answer(doc.answer)
        p = runner.predict(arm, codec.prefix(doc.prompt), cont, answer_span=answer_span(doc, codec))
        digits = codec.predicted(p.argmax, n_answer, doc.answer)
        preds.append(digits)
        answers.append(doc.answer)
        exact.append(float(digits == doc.answer))
        infos.append(p.info)
    return metrics.passkey_accuracy(preds, answers), exact, infos


def score_recall(runner: Predictor, arm: str, docs: Sequence[tasks.RecallSample], codec: Codec = BYTES
                 ) -> tuple[metrics.RecallScore, list[dict[str, float]]]:
    preds, answers, infos = [], [], []
    for doc in docs:
        row = []
        for i, answer in enumerate(doc.answers):
            cont, n_answer = codec.answer(answer)
            p = runner.predict(arm, codec.prefix(doc.prompt_for(i)), cont)
            row.append(codec.predicted(p.argmax, n_answer, answer))
            infos.append(p.info)
        preds.append(row)
        answers.append(list(doc.answers))
    return metrics.recall_accuracy(preds, answers), infos


def nll_at_h(runner: Predictor, arm: str, texts: Sequence[str], horizon: int, codec: Codec = BYTES) -> list[float]:
    """Per text, the mean NLL of its last ``horizon`` tokens with the history before them seen through ``arm``."""
    return nll_at_h_ids(runner, arm, [codec.prefix(text) for text in texts], horizon)


def nll_at_h_ids(runner: Predictor, arm: str, docs: Sequence[torch.Tensor], horizon: int) -> list[float]:
    """``nll_at_h`` of documents given as token ids ``ids[N]``."""
    return [float(runner.predict(arm, ids[:-horizon], ids[-horizon:]).nll.mean()) for ids in docs]


@dataclasses.dataclass(frozen=True)
class LensRanking:
    """Per document (those whose start holds at least 3 gists), where finite: ``rho`` Spearman(LensNet
    utility of each gist, true NLL drop when only that gist is expanded); ``top1`` 1.0 where
    LensNet's highest-scored gist is the one whose expansion lowers the answer's NLL most;
    ``retest`` Spearman(true drops, true drops of the twin document: other key digits, the same
    layout; left out where the twin's layout differs); ``key_oracle`` Spearman(1 on the gists
    holding the key and 0 elsewhere, true drops)."""

    rho: list[float]
    top1: list[float]
    retest: list[float]
    key_oracle: list[float]


def _ranking_start(runner: ArmRunner, doc: tasks.PasskeySample, codec: Codec
                   ) -> tuple[WorkingContext, LevelTable, torch.Tensor, torch.Tensor] | None:
    """The start layout of ``doc``'s prompt, with the tree and tokens that scoring and predicting over
    it take (``source``, ``prefix``, ``cont``); None when the prompt fits raw or the start holds
    fewer than 3 gists."""
    prefix, (cont, _) = codec.prefix(doc.prompt), codec.answer(doc.answer)
    n, room = int(prefix.numel()), runner.budget - (int(cont.numel()) - 1)
    if n <= room:
        return None
    levels, num_levels = runner.tree(prefix)
    wc = runner.start_layout(n, room, num_levels)
    if int((wc.levels > 0).sum()) < 3:
        return None
    return wc, runner.source(levels, prefix, cont), prefix, cont


def _expansion_gains(runner: ArmRunner, wc: WorkingContext, source: LevelTable, cont: torch.Tensor) -> np.ndarray:
    """``gain[G]``: the answer's NLL drop (summed over its tokens) when each gist of ``wc`` alone is
    expanded, in the order of ``wc``'s gists."""
    base = runner.predict_wc(wc, source, cont).nll.sum()
    return np.array([base - runner.predict_wc(wc.expand([int(g)]), source, cont).nll.sum()
                     for g in np.flatnonzero(wc.levels > 0)])


@torch.no_grad()
def lens_ranking(runner: ArmRunner, docs: Sequence[tasks.PasskeySample], codec: Codec = BYTES,
                 seed: int = 0) -> LensRanking:
    """LensNet's ranking of the gists of the working context the ``mc`` arm's refocus starts from
    (``ArmRunner.start_layout``: what LensNet scores first) against the true benefit of expanding
    each gist alone (answer NLL before minus after), with the two references of ``LensRanking``
    (``seed`` draws the twins' digits)."""
    rho, top1, retest, key_oracle = [], [], [], []
    for i, doc in enumerate(docs):
        start = _ranking_start(runner, doc, codec)
        if start is None:
            continue
        wc, source, prefix, cont = start
        gists = np.flatnonzero(wc.levels > 0)
        scores = runner.scorer(source, prefix)(wc)[gists]
        gain = _expansion_gains(runner, wc, source, cont)
        top1.append(float(np.argmax(scores) == np.argmax(gain)))
        key = np.isin(gists, covering_gists(wc, answer_span(doc, codec))).astype(np.float64)
        pairs = [(rho, scores, gain), (key_oracle, key, gain)]
        twin = _ranking_start(runner, twin_passkey(doc, rng(seed, 4, i)), codec)
        if twin is not None and twin[0] == wc:  # the twin's layout is the document's: ranks compare
            pairs.append((retest, gain, _expansion_gains(runner, wc, twin[1], twin[3])))
        for out, a, b in pairs:
            r = spearman(a, b)
            if math.isfinite(r):
                out.append(r)
    return LensRanking(rho, top1, retest, key_oracle)
