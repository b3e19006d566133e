"""Scoring helpers for the long-context tasks: exact match, and per digit and per position,
where exact match alone hides partial recall.

Predictions are compared after stripping surrounding whitespace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _check_pair(predictions: Sequence[object], answers: Sequence[object]) -> None:
    if isinstance(predictions, str) or isinstance(answers, str):
        raise ValueError("predictions and answers must be sequences of strings, not a single string")
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("need at least one answer to score")


@dataclass(frozen=True)
class PasskeyScore:
    exact: float  # fraction of predictions equal to their answer
    per_digit: float  # fraction of answer characters matched at the same position
    per_position: tuple[float, ...]  # per_position[i]: accuracy at character i (answers longer than i)
    count: int


def passkey_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> PasskeyScore:
    """Exact match, per-digit and per-position accuracy (missing characters count as wrong)."""
    _check_pair(predictions, answers)
    width = max(len(a) for a in answers)
    hits = np.zeros(width, dtype=np.int64)
    totals = np.zeros(width, dtype=np.int64)
    exact = 0
    for pred, ans in zip(predictions, answers, strict=True):
        p, a = pred.strip(), ans.strip()
        if not a:
            raise ValueError("answers must be non-empty strings")
        exact += p == a
        for i, ch in enumerate(a):
            totals[i] += 1
            hits[i] += i < len(p) and p[i] == ch
    return PasskeyScore(
        exact=exact / len(answers),
        per_digit=float(hits.sum() / totals.sum()),
        per_position=tuple(float(h / t) for h, t in zip(hits, totals, strict=True)),
        count=len(answers),
    )


@dataclass(frozen=True)
class RecallScore:
    query_accuracy: float  # fraction of all queries answered exactly
    document_accuracy: float  # fraction of documents with every query right
    num_queries: int
    num_documents: int


def recall_accuracy(predictions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]]) -> RecallScore:
    """Exact-match accuracy over queries and over documents (lists of per-document answers)."""
    _check_pair(predictions, answers)
    right = total = docs_right = 0
    for d, (preds, ans) in enumerate(zip(predictions, answers, strict=True)):
        if isinstance(preds, str) or isinstance(ans, str):
            raise ValueError(f"document {d}: expected a list of strings per document, got a string")
        if len(preds) != len(ans) or not ans:
            raise ValueError(f"document {d}: got {len(preds)} predictions for {len(ans)} answers (need >= 1)")
        ok = [p.strip() == a.strip() for p, a in zip(preds, ans, strict=True)]
        right += sum(ok)
        total += len(ok)
        docs_right += all(ok)
    return RecallScore(
        query_accuracy=right / total,
        document_accuracy=docs_right / len(answers),
        num_queries=total,
        num_documents=len(answers),
    )


@dataclass(frozen=True)
class Grid:
    """Mean score per (depth, length) cell; ``accuracy[i, j]`` is NaN where no sample fell."""

    depths: tuple[float, ...]
    lengths: tuple[int, ...]
    accuracy: np.ndarray  # shape (len(depths), len(lengths))
    counts: np.ndarray  # same shape, samples per cell


def grid(depths: Sequence[float], lengths: Sequence[int], scores: Sequence[float], decimals: int = 3) -> Grid:
    """Aggregate per-sample scores (1/0 or fractional) by depth (rounded to ``decimals``) x length."""
    if not len(depths) == len(lengths) == len(scores):
        raise ValueError(f"depths, lengths and scores differ in length: {len(depths)}, {len(lengths)}, {len(scores)}")
    if not scores:
        raise ValueError("need at least one sample to aggregate")
    ds = [round(float(d), decimals) for d in depths]
    ls = [int(n) for n in lengths]
    dv, lv = tuple(sorted(set(ds))), tuple(sorted(set(ls)))
    sums = np.zeros((len(dv), len(lv)))
    counts = np.zeros((len(dv), len(lv)), dtype=np.int64)
    for d, n, s in zip(ds, ls, scores, strict=True):
        if not math.isfinite(float(s)):
            raise ValueError(f"scores must be finite, got {s}")
        i, j = dv.index(d), lv.index(n)
        sums[i, j] += float(s)
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Grid(depths=dv, lengths=lv, accuracy=acc, counts=counts)
