"""``megacontext eval long-context``: how much full-context quality MegaContext keeps at budget ``W``.

On seeded documents from ``data.tasks`` (byte-level tokens) at lengths ``x * W`` for each ``x`` in
``--lengths``, every arm of ``arms.ARMS`` answers with at most ``W`` entries (``full`` only where
the sequence fits the model's window). Metrics per (arm, length):

- ``passkey_acc``: exact match of the 5-digit pass key (teacher forcing: all digits argmax-right,
  which is what greedy decoding would produce), also ``passkey_digit`` (per digit; chance 0.1)
  and the depth x length grid (heatmap PNG per arm);
- ``recall_acc``: multi-query associative recall (2 pairs over 16 symbols, 3-digit values),
  query-level exact match;
- ``nll_h``: mean NLL of the last ``H`` tokens of each passkey and recall document (``H`` =
  ``--horizon``), with the history before them seen through the arm; ``delta_nll_h`` = that
  minus the full-attention NLL on the same tokens (None where full attention does not fit);
- ``swap_rate``, ``residency`` (MC arm only): of the allocator's refocus calls (``FocusReport``
  swap rate; share of entries kept), averaged over the calls and documents;
- ``key_raw``, ``key_raw_reachable`` (MC arm only, passkey documents): the share of documents whose
  key digits are raw after the refocus calls, and the share in which the budget could hold them raw
  at all (the cheapest legal layout, ``arms.answer_focus``): focus misses against layout limits. The
  evaluation knows where the key is; LensNet and the allocator never do; ``key_raw_acc``: exact
  accuracy over the documents whose key was raw (the reader's share of the misses, apart from the
  lens's; None when no key was raw);
- ``lens_rank_corr``: Spearman correlation, per passkey document, between LensNet's utility of
  each gist of the working context the MC arm's refocus starts from (``--start``) and the true benefit of
  expanding that gist alone (NLL of the answer before minus after), averaged over documents;
  ``lens_top1``: over the same documents, the share in which LensNet's highest-scored gist is the
  one whose expansion helps most (the rank that refocus acts on first). Two references on the
  same documents say what the correlation can reach: ``lens_rank_retest``, the Spearman
  correlation between the true benefits and those of a twin document that differs only in the
  key's digits (the truth against itself: how reproducible the ranking to be learned is), and
  ``lens_rank_key_oracle``, that of a lens that knows where the key is (1 for the gists holding it,
  0 for the rest).

A task that cannot fit a document of that length (the passkey needs ~82 characters) reports
None; at such lengths ``nll_h`` is measured on plain filler documents instead (``nll_docs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, MCConfig
from ..context import LevelTable
from ..context.working_context import WorkingContext
from ..data import metrics, tasks
from .arms import ARMS, ArmRunner, covering_gists
from .checkpoint import load
from .codec import BYTES, Codec, tokenizer_codec

PASSKEY_DIGITS = 5
LENS_KEYS = {"rho": "lens_rank_corr", "top1": "lens_top1", "retest": "lens_rank_retest",
             "key_oracle": "lens_rank_key_oracle"}
"""The result's key of each ``LensRanking`` field (each also ``KEY_by_length``)."""
RECALL = {"num_pairs": 2, "num_symbols": 16, "value_digits": 3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a tiny checkpoint from `megacontext eval train-tiny`, or a nanochat checkpoint directory "
                        "(base, mid or SFT; trained with or without --mc; needs NANOCHAT_DIR or nanochat importable)")
    p.add_argument("--step", type=int, default=None, help="nanochat checkpoint: the step to load (default: the last)")
    p.add_argument("--budget", type=int, default=None,
                   help="working-context budget W (entries), every arm (default: 64 for a tiny checkpoint; a "
                        "nanochat checkpoint's own budget, as its post-run validation uses)")
    p.add_argument("--lengths", default="1,2,4,8,16", help="document lengths as multiples of W (comma list)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey depths (fractions, comma list)")
    p.add_argument("--samples", type=int, default=8, help="passkey documents per (depth, length) cell")
    p.add_argument("--recall-docs", type=int, default=16, help="recall documents per length")
    p.add_argument("--lens-docs", type=int, default=8, help="passkey documents per length for lens_rank_corr")
    p.add_argument("--horizon", type=int, default=None,
                   help="H: tokens at the end of a document for ΔNLL@H (default: 16 for a tiny checkpoint; a "
                        "nanochat checkpoint's --mc_horizon)")
    p.add_argument("--arms", default=None,
                   help=f"comma list out of {','.join(ARMS)} (default: all; a nanochat run trained without --mc "
                        f"has no GistNet/LensNet, so truncation,full)")
    p.add_argument("--rounds", type=int, default=4, help="refocus calls of the MC arm per document")
    p.add_argument("--start", choices=("recency", "coarsest"), default="coarsest",
                   help="the MC arm's working context before refocusing")
    p.add_argument("--seed", type=int, default=1234, help="seed of the evaluation documents")
    p.add_argument("--expand-threshold", type=float, default=None,
                   help="override the checkpoint's --allocator_expand_threshold for the MC arm")
    p.add_argument("--collapse-threshold", type=float, default=None,
                   help="override the checkpoint's --allocator_collapse_threshold for the MC arm")
    p.add_argument("--max-replacements", type=int, default=None,
                   help="override the checkpoint's --allocator_max_replacements for the MC arm")
    p.add_argument("--iterations", type=int, default=None,
                   help="override the checkpoint's --allocator_iterations for the MC arm (rounds per refocus call)")
    p.add_argument("--expand-neighbours", type=int, default=None,
                   help="override the checkpoint's --allocator_expand_neighbours for the MC arm (ablation)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--png", type=Path, default=None,
                   help="heatmap PNG (default: beside --json); the ΔNLL plot gets the suffix _nll")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
        depths = _floats(args.depths)
        arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    bad = [a for a in arms or () if a not in ARMS]
    if bad or arms == []:
        parser.error(f"--arms: unknown {bad}; expected names out of {ARMS}")
    if any(x < 1 for x in lengths) or not lengths:
        parser.error("--lengths: multiples of the budget must be >= 1")
    overrides = {k: v for k, v in (("allocator_expand_threshold", args.expand_threshold),
                                   ("allocator_collapse_threshold", args.collapse_threshold),
                                   ("allocator_max_replacements", args.max_replacements),
                                   ("allocator_iterations", args.iterations),
                                   ("allocator_expand_neighbours", args.expand_neighbours)) if v is not None}
    try:  # the knobs' own checks, before a checkpoint is loaded
        dataclasses.replace(MCConfig(), **overrides)
    except ConfigError as e:
        parser.error(str(e))
    if not args.checkpoint.exists():
        parser.error(f"--checkpoint {args.checkpoint}: no such file or directory")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    codec = BYTES
    if args.checkpoint.is_dir():  # a nanochat run: its GPT, its tokenizer, its aux nets (if trained with --mc)
        from . import nanochat_checkpoint

        try:
            nc = nanochat_checkpoint.load(args.checkpoint, args.step)
        except nanochat_checkpoint.CheckpointError as e:
            parser.error(f"--checkpoint {e}")
        model, ctrl, recipe, codec = nc.model, nc.controller, nc.recipe, tokenizer_codec(nc.tokenizer)
        budget = args.budget or nc.budget
        horizon = args.horizon or ctrl.cfg.mc_horizon
        if not nc.trained_with_mc:
            asked = [a for a in arms or () if a in nanochat_checkpoint.NEEDS_AUX_NETS]
            if asked:
                parser.error(f"--arms {','.join(asked)}: {args.checkpoint} step {nc.step} was trained without --mc "
                             f"(no megacontext_{nc.step:06d}.pt), so there is no GistNet/LensNet to run them with; "
                             f"use --arms truncation,full")
            arms = arms or [a for a in ARMS if a not in nanochat_checkpoint.NEEDS_AUX_NETS]
            print(f"{args.checkpoint} step {nc.step}: trained without --mc, so the arms are {','.join(arms)} "
                  f"(vanilla attention at W={budget}; uniform and mc need the aux nets an --mc run trains)")
        else:
            print(f"{args.checkpoint} step {nc.step}: GistNet and LensNet from {recipe['megacontext_state']}")
    else:
        if args.step is not None:
            parser.error("--step: only for a nanochat checkpoint directory")
        try:
            model, ctrl, recipe = load(args.checkpoint)
        except ValueError as e:
            parser.error(f"--checkpoint {e}")
        budget, horizon = args.budget or 64, args.horizon or 16
    arms = arms or list(ARMS)
    if budget > int(model.config.sequence_len) or horizon >= budget:
        parser.error(f"--budget {budget} / --horizon {horizon}: need horizon < budget <= the model's window "
                     f"{model.config.sequence_len}")
    if overrides:
        ctrl.cfg = dataclasses.replace(ctrl.cfg, **overrides)
    with torch.no_grad():
        result = evaluate(model, ctrl, budget=budget, lengths=lengths, depths=depths, samples=args.samples,
                          recall_docs=args.recall_docs, lens_docs=args.lens_docs, horizon=horizon, arms=arms,
                          rounds=args.rounds, start=args.start, seed=args.seed, codec=codec)
    result["checkpoint"] = str(args.checkpoint)
    result["recipe"] = recipe
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    png = args.png or (args.json.with_suffix(".png") if args.json is not None else None)
    if png is not None:
        written = write_plots(result, png)
        for path in written:
            print(f"wrote {path}")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def _mean(values: Sequence[float]) -> float | None:
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


# ---- documents ------------------------------------------------------------------------------------
def make_passkey_docs(seed: int, length: int, depths: Sequence[float], samples: int) -> list[tasks.PasskeySample]:
    out = []
    for di, depth in enumerate(depths):
        for s in range(samples):
            out.append(tasks.make_passkey(_rng(seed, 1, length, di, s), num_chars=length, depth=depth,
                                          digits=PASSKEY_DIGITS))
    return out


def make_recall_docs(seed: int, length: int, count: int) -> list[tasks.RecallSample]:
    out = []
    for s in range(count):
        rng = _rng(seed, 2, length, s)
        out.append(tasks.make_recall(rng, num_chars=length, depth=float(rng.uniform(0, 1)), **RECALL))
    return out


def passkey_fits(length: int) -> bool:
    try:
        tasks.make_passkey(0, num_chars=length, digits=PASSKEY_DIGITS)
    except ValueError:
        return False
    return True


def recall_fits(length: int) -> bool:
    try:
        tasks.make_recall(0, num_chars=length, **RECALL)
    except ValueError:
        return False
    return True


# ---- scoring ----------------------------------------------------------------------------------------
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


def answer_span(doc: tasks.PasskeySample, codec: Codec = BYTES) -> tuple[int, int]:
    """The prefix tokens ``[lo, hi)`` that hold the key's digits in the key line (exact for bytes; for a
    BPE tokenizer, the tokens of the text before and through the digits, which may differ from the
    whole prompt's tokenization by a token at either edge)."""
    first = _key_start(doc)
    return (len(codec.prefix(doc.prompt[:first])), len(codec.prefix(doc.prompt[:first + len(doc.answer)])))


def _key_start(doc: tasks.PasskeySample) -> int:
    """The character offset in ``doc.prompt`` of the key's digits in the key line."""
    return doc.prompt.index(doc.answer, doc.key_offset)


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
    out = []
    for text in texts:
        ids = codec.prefix(text)
        out.append(float(runner.predict(arm, ids[:-horizon], ids[-horizon:]).nll.mean()))
    return out


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


def twin_passkey(doc: tasks.PasskeySample, rng: np.random.Generator) -> tasks.PasskeySample:
    """``doc`` with other key digits (each one changed) in its key line and answer; everything else,
    the filler and the key line's position, is the same."""
    first = _key_start(doc)
    answer = "".join(str((int(c) + int(rng.integers(1, 10))) % 10) for c in doc.answer)
    prompt = doc.prompt[:first] + answer + doc.prompt[first + len(doc.answer):]
    after = doc.text[len(doc.prompt):].replace(doc.answer, answer, 1)  # the answer after the query
    return dataclasses.replace(doc, prompt=prompt, answer=answer, text=prompt + after)


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
        twin = _ranking_start(runner, twin_passkey(doc, _rng(seed, 4, i)), codec)
        if twin is not None and twin[0] == wc:  # the twin's layout is the document's: ranks compare
            pairs.append((retest, gain, _expansion_gains(runner, wc, twin[1], twin[3])))
        for out, a, b in pairs:
            r = spearman(a, b)
            if math.isfinite(r):
                out.append(r)
    return LensRanking(rho, top1, retest, key_oracle)


def evaluate(model: torch.nn.Module, ctrl: torch.nn.Module, *, budget: int, lengths: Sequence[int],
             depths: Sequence[float], samples: int, recall_docs: int, lens_docs: int, horizon: int,
             arms: Sequence[str], rounds: int = 4, start: str = "coarsest", seed: int = 1234,
             codec: Codec = BYTES) -> dict[str, Any]:
    """All metrics as a JSON-able dict (see the module docstring); ``rows`` one per (arm, length).

    Documents of ``x * budget`` tokens are ``x * budget * codec.chars_per_token`` characters long
    (bytes: one character per token; a BPE tokenizer: its measured ratio, so lengths stay in tokens)."""
    t0 = time.perf_counter()
    runner = ArmRunner(model, ctrl, budget, rounds=rounds, start=start)
    if horizon >= budget:
        raise ValueError(f"--horizon {horizon} must be smaller than the budget {budget}")
    rows: list[dict[str, Any]] = []
    grids: dict[str, dict[str, Any]] = {}
    grid_cells: dict[str, tuple[list[float], list[int], list[float]]] = {a: ([], [], []) for a in arms}
    lens_fields = [f.name for f in dataclasses.fields(LensRanking)]
    lens_by_length: dict[str, dict[int, float | None]] = {name: {} for name in lens_fields}
    lens_all: dict[str, list[float]] = {name: [] for name in lens_fields}
    for x in lengths:
        L = x * budget
        chars = max(1, round(L * codec.chars_per_token))
        pk = make_passkey_docs(seed, chars, depths, samples) if passkey_fits(chars) else []
        rc = make_recall_docs(seed, chars, recall_docs) if recall_fits(chars) and recall_docs > 0 else []
        texts = [d.text for d in pk] + [d.text for d in rc]
        nll_docs = "tasks"
        if not texts:
            texts = [tasks.make_filler_document(_rng(seed, 3, L, s), chars) for s in range(max(samples, 4))]
            nll_docs = "filler"
        lengths_ids = [int(codec.prefix(t).numel()) for t in texts]
        texts = [t for t, n in zip(texts, lengths_ids, strict=True) if n > horizon + 1]
        full_fits = all(runner.fits_full(n - horizon, horizon) for n in lengths_ids if n > horizon + 1)
        full_nll = nll_at_h(runner, "full", texts, horizon, codec) if full_fits else None
        for arm in arms:
            if arm == "full" and not full_fits:
                rows.append({"arm": arm, "length_x": x, "length_tokens": L, "passkey_acc": None,
                             "passkey_digit": None, "recall_acc": None, "nll_h": None, "delta_nll_h": None,
                             "note": f"does not fit sequence_len {runner.seq_len}"})
                continue
            row: dict[str, Any] = {"arm": arm, "length_x": x, "length_tokens": L, "nll_docs": nll_docs}
            infos: list[dict[str, float]] = []
            if pk:
                score, exact, pk_infos = score_passkey(runner, arm, pk, codec)
                row.update(passkey_acc=score.exact, passkey_digit=score.per_digit, passkey_docs=len(pk))
                if arm == "mc":
                    row["key_raw_acc"] = _mean([e for e, i in zip(exact, pk_infos, strict=True)
                                                if i.get("key_raw") == 1.0])
                infos += pk_infos
                g = grid_cells[arm]
                g[0].extend(d.depth for d in pk)
                g[1].extend([x] * len(pk))
                g[2].extend(exact)
            else:
                row.update(passkey_acc=None, passkey_digit=None, passkey_docs=0)
            if rc:
                rscore, rc_infos = score_recall(runner, arm, rc, codec)
                row.update(recall_acc=rscore.query_accuracy, recall_docs=len(rc))
                infos += rc_infos
            else:
                row.update(recall_acc=None, recall_docs=0)
            nll = (full_nll if arm == "full" and full_nll is not None
                   else nll_at_h(runner, arm, texts, horizon, codec))
            row["nll_h"] = _mean(nll)
            row["delta_nll_h"] = (_mean([a - b for a, b in zip(nll, full_nll, strict=True)])
                                  if full_nll is not None else None)
            if arm == "mc":
                for key in ("swap_rate", "residency", "key_raw", "key_raw_reachable"):
                    row[key] = _mean([i[key] for i in infos if key in i])
            rows.append(row)
        if "mc" in arms and lens_docs > 0 and pk:
            ranking = lens_ranking(runner, pk[:: max(1, len(pk) // lens_docs)][:lens_docs], codec, seed=seed)
            for name, values in dataclasses.asdict(ranking).items():
                lens_by_length[name][x] = _mean(values)
                lens_all[name] += values
    for arm in arms:
        d, n, s = grid_cells[arm]
        if s:
            g = metrics.grid(d, n, s)
            grids[arm] = {"depths": list(g.depths), "lengths_x": list(g.lengths), "accuracy": g.accuracy.tolist(),
                          "counts": g.counts.tolist()}
    lens_metrics: dict[str, Any] = {}
    for name, key in LENS_KEYS.items():
        lens_metrics[key] = _mean(lens_all[name])
        lens_metrics[f"{key}_by_length"] = {str(k): v for k, v in lens_by_length[name].items()}
    cfg = ctrl.cfg
    return {
        "rows": rows,
        **lens_metrics,
        "lens_rank_corr_docs": len(lens_all["rho"]),
        "passkey_grid": grids,
        "settings": {"budget": budget, "lengths_x": list(lengths), "depths": list(depths), "samples": samples,
                     "recall_docs": recall_docs, "horizon": horizon, "arms": list(arms), "rounds": rounds,
                     "start": start, "seed": seed, "block_size": cfg.block_size,
                     "recent_tokens": int(ctrl.prompt_recent),
                     "lens_horizon": cfg.mc_horizon, "allocator": {
                         "expand_threshold": cfg.allocator_expand_threshold,
                         "collapse_threshold": cfg.allocator_collapse_threshold,
                         "max_replacements": cfg.allocator_max_replacements,
                         "iterations": cfg.allocator_iterations, "type": cfg.allocator_type,
                         "expand_neighbours": cfg.allocator_expand_neighbours},
                     "sequence_len": runner.seq_len, "tokens": codec.name,
                     "passkey_chance_digit": 0.1},
        "seconds": time.perf_counter() - t0,
    }


def format_cell(value: Any) -> str:
    """One table cell: ``-`` for a missing value, floats to three decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    cols = ["arm", "length_x", "passkey_acc", "passkey_digit", "recall_acc", "nll_h", "delta_nll_h", "swap_rate",
            "residency", "key_raw", "key_raw_reachable", "key_raw_acc"]

    s = result["settings"]
    lines = [f"long-context eval: budget W={s['budget']}, K={s['block_size']}, H={s['horizon']}, "
             f"model window {s['sequence_len']}, {s['tokens']}"]
    for arm in s["arms"]:
        rows = [r for r in result["rows"] if r["arm"] == arm]
        cells = [[format_cell(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines.append("")
        lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append("")
    lr = result["lens_rank_corr"]
    lines.append(f"lens_rank_corr (Spearman, LensNet utility vs true NLL drop of expanding each gist): "
                 f"{format_cell(lr)} over {result['lens_rank_corr_docs']} documents")
    lines.append(f"lens_top1 (LensNet's top gist is the most useful one to expand): {format_cell(result['lens_top1'])}")
    lines.append(f"  references: lens_rank_retest (the true ranking against a twin document with other key digits) "
                 f"{format_cell(result.get('lens_rank_retest'))}, lens_rank_key_oracle (a lens that knows where "
                 f"the key is) {format_cell(result.get('lens_rank_key_oracle'))}")
    for arm, g in result["passkey_grid"].items():
        lines.append(f"\npasskey exact match, {arm} (rows: depth, columns: length x W)")
        head = "depth\\len " + " ".join(f"{n:>6d}" for n in g["lengths_x"])
        lines.append(head)
        for d, accs in zip(g["depths"], g["accuracy"], strict=True):
            lines.append(f"{d:9.2f} " + " ".join("     -" if a is None or a != a else f"{a:6.2f}" for a in accs))
    return "\n".join(lines)


def write_plots(result: dict[str, Any], png: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'megacontext-plugin[bench]'): no PNG written")
        return []
    png.parent.mkdir(parents=True, exist_ok=True)
    written = []
    grids = result["passkey_grid"]
    if grids:
        fig, axes = plt.subplots(1, len(grids), figsize=(3.0 * len(grids) + 1.5, 3.8), squeeze=False,
                                 layout="constrained")
        for k, (ax, (arm, g)) in enumerate(zip(axes[0], grids.items(), strict=True)):
            acc = np.array([[np.nan if a is None else a for a in row] for row in g["accuracy"]], dtype=float)
            im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
            ax.set_xticks(range(len(g["lengths_x"])), [f"{n}x" for n in g["lengths_x"]])
            ax.set_yticks(range(len(g["depths"])), [f"{d:.2f}" for d in g["depths"]] if k == 0 else [])
            ax.set_title(arm)
            ax.set_xlabel("length (x W)")
            for i in range(acc.shape[0]):
                for j in range(acc.shape[1]):
                    if np.isfinite(acc[i, j]):
                        ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if acc[i, j] < 0.5 else "black")
        axes[0][0].set_ylabel("passkey depth")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="exact match")
        fig.suptitle(f"passkey accuracy at budget W={result['settings']['budget']}")
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm in result["settings"]["arms"]:
        pts = [(r["length_x"], r["nll_h"]) for r in result["rows"] if r["arm"] == arm and r.get("nll_h") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("length (x W)")
    ax.set_ylabel(f"NLL@H (H={result['settings']['horizon']}), nats")
    ax.legend()
    fig.tight_layout()
    nll_png = png.with_name(png.stem + "_nll.png")
    fig.savefig(nll_png, dpi=120)
    plt.close(fig)
    written.append(nll_png)
    return written
