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
- ``tail`` (MC arm only): the mean protected raw tail its refocus started from, the run's tail halved where
  a long history's coarsest layout leaves no room to open anything (``focus.fitted_tail``);
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

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..data import metrics, tasks
from ..focus import PROMPT_ROUNDS
from ..nets import AuxNets
from .arms import ArmRunner
from .codec import BYTES, Codec
from .documents import (
    make_passkey_docs,
    make_recall_docs,
    passkey_fits,
    recall_fits,
    rng,
    text_documents,
)
from .scoring import (
    LENS_KEYS,
    LensRanking,
    lens_ranking,
    mean,
    nll_at_h,
    nll_at_h_ids,
    score_passkey,
    score_recall,
)


def evaluate(model: torch.nn.Module, nets: AuxNets, *, budget: int, lengths: Sequence[int],
             depths: Sequence[float], samples: int, recall_docs: int, lens_docs: int, horizon: int,
             arms: Sequence[str], rounds: int = PROMPT_ROUNDS, start: str = "coarsest", seed: int = 1234,
             codec: Codec = BYTES) -> dict[str, Any]:
    """All metrics as a JSON-able dict (see the module docstring); ``rows`` one per (arm, length).

    Documents of ``x * budget`` tokens are ``x * budget * codec.chars_per_token`` characters long
    (bytes: one character per token; a BPE tokenizer: its measured ratio, so lengths stay in tokens)."""
    t0 = time.perf_counter()
    runner = ArmRunner(model, nets, budget, rounds=rounds, start=start)
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
            texts = [tasks.make_filler_document(rng(seed, 3, L, s), chars) for s in range(max(samples, 4))]
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
                    row["key_raw_acc"] = mean([e for e, i in zip(exact, pk_infos, strict=True)
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
            row["nll_h"] = mean(nll)
            row["delta_nll_h"] = (mean([a - b for a, b in zip(nll, full_nll, strict=True)])
                                  if full_nll is not None else None)
            if arm == "mc":
                for key in ("swap_rate", "residency", "key_raw", "key_raw_reachable", "tail"):
                    row[key] = mean([i[key] for i in infos if key in i])
            rows.append(row)
        if "mc" in arms and lens_docs > 0 and pk:
            ranking = lens_ranking(runner, pk[:: max(1, len(pk) // lens_docs)][:lens_docs], codec, seed=seed)
            for name, values in dataclasses.asdict(ranking).items():
                lens_by_length[name][x] = mean(values)
                lens_all[name] += values
    for arm in arms:
        d, n, s = grid_cells[arm]
        if s:
            g = metrics.grid(d, n, s)
            grids[arm] = {"depths": list(g.depths), "lengths_x": list(g.lengths), "accuracy": g.accuracy.tolist(),
                          "counts": g.counts.tolist()}
    lens_metrics: dict[str, Any] = {}
    for name, key in LENS_KEYS.items():
        lens_metrics[key] = mean(lens_all[name])
        lens_metrics[f"{key}_by_length"] = {str(k): v for k, v in lens_by_length[name].items()}
    cfg = nets.cfg
    return {
        "rows": rows,
        **lens_metrics,
        "lens_rank_corr_docs": len(lens_all["rho"]),
        "passkey_grid": grids,
        "settings": {"budget": budget, "lengths_x": list(lengths), "depths": list(depths), "samples": samples,
                     "recall_docs": recall_docs, "horizon": horizon, "arms": list(arms), "rounds": rounds,
                     "start": start, "seed": seed, "block_size": cfg.block_size,
                     "recent_tokens": nets.prompt_recent,
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


def evaluate_documents(model: torch.nn.Module, nets: AuxNets, texts: dict[str, str], *, budget: int,
                       lengths: Sequence[int], horizon: int, arms: Sequence[str], limit: int,
                       rounds: int = PROMPT_ROUNDS, start: str = "coarsest", codec: Codec = BYTES) -> dict[str, Any]:
    """NLL@H per arm on the user's texts (``--documents``), cut into documents of ``x * budget`` tokens:
    ``delta_nll_h`` against full attention (where it fits), ``delta_nll_truncation`` against truncation,
    and ``gap_closed``, the share of truncation's gap to full attention that the arm closes."""
    t0 = time.perf_counter()
    runner = ArmRunner(model, nets, budget, rounds=rounds, start=start)
    rows: list[dict[str, Any]] = []
    token_ids = [codec.encode(text) for text in texts.values()]
    for x in lengths:
        L = x * budget
        docs = text_documents(token_ids, codec.bos, L, limit)
        if not docs:
            print(f"{x}x: no file holds {L} tokens; left out")
            continue
        full_fits = runner.fits_full(L - horizon, horizon)
        nll = {arm: nll_at_h_ids(runner, arm, docs, horizon) for arm in arms if arm != "full" or full_fits}
        if "truncation" not in nll:
            nll["truncation"] = nll_at_h_ids(runner, "truncation", docs, horizon)
        full = nll.get("full") or (nll_at_h_ids(runner, "full", docs, horizon) if full_fits else None)
        trunc = nll["truncation"]
        for arm in arms:
            row: dict[str, Any] = {"arm": arm, "length_x": x, "length_tokens": L, "documents": len(docs)}
            if arm not in nll:
                rows.append(row | {"nll_h": None, "note": f"does not fit sequence_len {runner.seq_len}"})
                continue
            row["nll_h"] = mean(nll[arm])
            row["delta_nll_truncation"] = mean([a - b for a, b in zip(nll[arm], trunc, strict=True)])
            if full is not None:
                row["delta_nll_h"] = mean([a - b for a, b in zip(nll[arm], full, strict=True)])
                gap = mean(trunc) - mean(full)  # type: ignore[operator]
                row["gap_closed"] = (mean(trunc) - row["nll_h"]) / gap if gap > 0 else None  # type: ignore[operator]
            rows.append(row)
    cfg = nets.cfg
    return {"rows": rows,
            "settings": {"budget": budget, "lengths_x": list(lengths), "horizon": horizon, "arms": list(arms),
                         "rounds": rounds, "start": start, "block_size": cfg.block_size,
                         "recent_tokens": nets.prompt_recent, "documents": f"{len(texts)} files",
                         "files": list(texts), "documents_per_length": limit, "sequence_len": runner.seq_len,
                         "tokens": codec.name},
            "seconds": time.perf_counter() - t0}
