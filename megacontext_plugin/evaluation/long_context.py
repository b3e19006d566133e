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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..config import ConfigError, MCConfig
from ..data import metrics, stdlib_text, tasks
from ..nets import AuxNets
from . import chat_arm, nanochat_checkpoint
from .arms import ARMS, ArmRunner, unheld_lengths, unheld_reason
from .checkpoint import load
from .codec import BYTES, Codec, tokenizer_codec
from .documents import (
    make_passkey_docs,
    make_recall_docs,
    passkey_fits,
    read_text_file,
    recall_fits,
    rng,
    text_documents,
)
from .report import format_table, write_plots
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

DEFAULT_LENGTHS = "1,2,4,8,16"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a tiny checkpoint from `megacontext eval train-tiny`, or a nanochat checkpoint directory "
                        "(base, mid or SFT; trained with or without --mc; needs NANOCHAT_DIR or nanochat importable)")
    p.add_argument("--step", type=int, default=None, help="nanochat checkpoint: the step to load (default: the last)")
    p.add_argument("--budget", type=int, default=None,
                   help="working-context budget W (entries), every arm (default: 64 for a tiny checkpoint; a "
                        "nanochat checkpoint's own budget, as its post-run validation uses)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS,
                   help="document lengths as multiples of W (comma list; by default those the budget can hold of "
                        f"{DEFAULT_LENGTHS})")
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
    p.add_argument("--documents", type=Path, nargs="+", default=None, metavar="PATH",
                   help="evaluate NLL@H on these text files instead of the seeded tasks: each is tokenized with the "
                        "run's tokenizer and cut into documents of each length (a run's training files, listed in "
                        "its corpus_train_files.txt, are refused)")
    p.add_argument("--documents-per-length", type=int, default=40,
                   help="--documents: at most this many documents per length, taken round-robin over the files")
    p.add_argument("--chat", action="store_true", help="the chat arm on a chat checkpoint (chatsft_checkpoints/TAG): "
                   "greedy answers to conversations that plant a fact first and ask for it last (chat_arm.py)")
    p.add_argument("--chat-docs", type=int, default=None, help="--chat: conversations per length (default 40)")
    p.add_argument("--chat-flags", default=None, help="--chat: chat_cli --mc flags for the mc arm on top of the run's "
                   "(e.g. --chat-flags='--mc_refocus_every 16')")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--png", type=Path, default=None,
                   help="heatmap PNG (default: beside --json); the ΔNLL plot gets the suffix _nll")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.chat or args.chat_docs is not None or args.chat_flags is not None:
        return chat_arm.run(args, parser)
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
    texts = None if args.documents is None else _read_documents(args.documents, args.checkpoint)
    if args.documents_per_length < 1:
        _fail(f"--documents-per-length {args.documents_per_length}: expected an integer >= 1")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    codec = BYTES
    if args.checkpoint.is_dir():  # a nanochat run: its GPT, its tokenizer, its aux nets (if trained with --mc)
        try:
            nc = nanochat_checkpoint.load(args.checkpoint, args.step)
        except CheckpointError as e:
            parser.error(f"--checkpoint {e}")
        model, nets, recipe, codec = nc.model, nc.nets, nc.recipe, tokenizer_codec(nc.tokenizer)
        budget = args.budget or nc.budget
        horizon = args.horizon or nets.cfg.mc_horizon
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
            model, nets, recipe = load(args.checkpoint)
        except ValueError as e:
            parser.error(f"--checkpoint {e}")
        budget, horizon = args.budget or 64, args.horizon or 16
    arms = arms or list(ARMS)
    if budget > int(model.config.sequence_len) or horizon >= budget:
        parser.error(f"--budget {budget} / --horizon {horizon}: need horizon < budget <= the model's window "
                     f"{model.config.sequence_len}")
    if any(a in ("uniform", "mc") for a in arms):
        lengths = _held_lengths(parser, lengths, explicit=args.lengths != DEFAULT_LENGTHS, budget=budget,
                                horizon=horizon, block_size=nets.cfg.block_size, recent=nets.prompt_recent,
                                slack=0.0 if codec.byte_level else 0.25)
    if overrides:
        nets.cfg = dataclasses.replace(nets.cfg, **overrides)
    with torch.no_grad():
        if texts is not None:
            result = evaluate_documents(model, nets, texts, budget=budget, lengths=lengths, horizon=horizon,
                                        arms=arms, limit=args.documents_per_length, rounds=args.rounds,
                                        start=args.start, codec=codec)
        else:
            result = evaluate(model, nets, budget=budget, lengths=lengths, depths=depths, samples=args.samples,
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


def _held_lengths(parser: argparse.ArgumentParser, lengths: list[int], *, explicit: bool, budget: int, horizon: int,
                  block_size: int, recent: int, slack: float) -> list[int]:
    """The lengths the compressed arms can hold (``arms.unheld_lengths``; ``slack``: bytes are exact, a
    tokenizer's lengths vary). A length asked for explicitly that cannot be held is one error line; the
    default lengths drop it, saying so."""
    geometry = {"budget": budget, "horizon": horizon, "block_size": block_size, "recent": recent}
    dropped = unheld_lengths(lengths, slack=slack, **geometry)
    if dropped:
        why = unheld_reason(*dropped[0], **geometry)
        if explicit:
            parser.error(f"--lengths {','.join(str(x) for x, _ in dropped)}: {why}; use shorter lengths or a larger "
                         f"--budget")
        print(f"lengths {','.join(f'{x}x' for x, _ in dropped)} left out: {why}")
    held = [x for x in lengths if x not in dict(dropped)]
    if not held:
        parser.error(f"--budget {budget}: no length can be held (a history of 1x needs {dropped[0][1]} entries)")
    return held


def _fail(message: str) -> NoReturn:
    """A user mistake about the documents: one line on stderr, exit 2."""
    print(f"megacontext eval long-context: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_documents(paths: Sequence[Path], checkpoint: Path) -> dict[str, str]:
    """``--documents``: each file's text by its path, read before any model is loaded. A file the run
    trained on (listed in ``corpus_train_files.txt`` of the checkpoint's run directory) is refused."""
    trained = _training_files(checkpoint)
    texts = {}
    for path in paths:
        try:
            texts[str(path)] = read_text_file(path)
        except ValueError as e:
            _fail(f"--documents {e}")
        if trained and _library_path(path) in trained:
            _fail(f"--documents {path}: the run trained on it (listed in {trained[_library_path(path)]}); evaluate "
                  f"on held-out files")
    return texts


def _training_files(checkpoint: Path) -> dict[str, Path]:
    """The standard-library files (relative paths) the run's corpus drew from, with the list naming them."""
    run_dir = checkpoint.parent.parent if checkpoint.is_dir() else checkpoint.parent
    listing = run_dir / "corpus_train_files.txt"
    if not listing.is_file():
        return {}
    return {line.strip(): listing for line in listing.read_text().splitlines() if line.strip()}


def _library_path(path: Path) -> str | None:
    """``path`` relative to the standard library's root, or None when it lies elsewhere."""
    try:
        return path.resolve().relative_to(stdlib_text.stdlib_root().resolve()).as_posix()
    except ValueError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def evaluate(model: torch.nn.Module, nets: AuxNets, *, budget: int, lengths: Sequence[int],
             depths: Sequence[float], samples: int, recall_docs: int, lens_docs: int, horizon: int,
             arms: Sequence[str], rounds: int = 4, start: str = "coarsest", seed: int = 1234,
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
                for key in ("swap_rate", "residency", "key_raw", "key_raw_reachable"):
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
                       lengths: Sequence[int], horizon: int, arms: Sequence[str], limit: int, rounds: int = 4,
                       start: str = "coarsest", codec: Codec = BYTES) -> dict[str, Any]:
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
