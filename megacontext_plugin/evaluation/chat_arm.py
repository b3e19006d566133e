"""``megacontext eval long-context --checkpoint DIR --chat``: does the chat model remember?

On a nanochat chat checkpoint (``chatsft_checkpoints/TAG``, or mid/RL), ``--chat-docs`` seeded
conversations per length (``chat_conversations``: the first user turn plants a pass key, a name or
a number, the last one asks for it, filler exchanges between; the prompt about ``x * W`` tokens for
each ``x`` in ``--lengths``) are answered by nanochat's ``Engine`` with greedy decoding, no teacher
forcing (``chat_engine``), per arm:

- ``mc``: the plugin's ``generate`` hook, set up as ``chat_cli --mc`` sets it up, at ``--mc_wc_budget W``;
- ``truncation``: vanilla attention at ``W`` (BOS and the conversation's last tokens);
- ``full``: the whole conversation, at the lengths where it and the answer fit the model's window.

Per (arm, length): ``chat_acc`` (answers holding the planted fact as a whole word,
``chat_conversations.fact_found``), ``chat_correct`` of ``chat_docs``, the same per kind
(``chat_acc_by_kind``), ``chat_tokens`` (the prompts' mean length) and, for ``mc``,
``mc_decoded`` (conversations the plugin decoded over MegaContext; the others fit the budget with
their answer and went to upstream's decode, as in a chat), ``fact_raw`` (of those, the share whose
session held the planted fact's tokens raw when the answer ended: the lens's part, as ``key_raw`` is
for pass keys) and ``fact_raw_acc`` (the answers right where it did: the reader's part). Every answer is in the JSON's
``answers``. Nothing tells the plugin where the fact is: it gets the conversation's tokens only.

A run trained without ``--mc`` has no GistNet/LensNet: ``truncation`` and ``full`` only. By
default the lengths are those of ``--lengths`` whose conversations a session's working context can
hold (with the answer), the others left out with a line; one asked for explicitly that cannot be
held is an error.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..checkpoint import CheckpointError
from ..config import ConfigError, MCConfig, explicit_knobs, register_arguments
from ..context import WorkingContext, WorkingContextError
from . import nanochat_checkpoint
from .chat_conversations import KINDS, ChatConversation, fact_found, fact_span, make_conversations, prompt_ids
from .chat_engine import ANSWER_TOKENS, CHAT_ARMS, EVALUATION_FLAGS, ChatEngine, chat_cli_flags
from .codec import tokenizer_codec
from .report import format_cell

DEFAULT_CHAT_DOCS = 40
ALLOCATOR_FLAGS = {"expand_threshold": "allocator_expand_threshold",
                   "collapse_threshold": "allocator_collapse_threshold",
                   "max_replacements": "allocator_max_replacements", "iterations": "allocator_iterations",
                   "expand_neighbours": "allocator_expand_neighbours"}
"""``eval long-context`` flags that override the run's knobs of the MC arm (``dest`` -> knob)."""
NOT_FOR_CHAT = ("depths", "samples", "recall_docs", "lens_docs", "horizon", "rounds", "start", "png", "documents",
                "documents_per_length")
"""Flags of the other arms, which mean nothing to the chat arm."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[int], list[str] | None]:
    """The lengths and the asked arms (None: the default), or one error line (exit 2) for a flag the chat
    arm does not take."""
    if not args.chat:
        parser.error("--chat-docs, --chat-flags: only with --chat")
    given = [d for d in NOT_FOR_CHAT if getattr(args, d, None) not in (None, parser.get_default(d))]
    if given:
        parser.error(f"{', '.join(_flag(d) for d in given)}: not used by --chat (the chat arm takes --lengths, --arms, "
                     f"--chat-docs, --chat-flags, --budget, --seed, --step, --json and the allocator overrides)")
    if args.chat_docs is not None and args.chat_docs < 1:
        parser.error(f"--chat-docs {args.chat_docs}: at least 1 conversation per length")
    try:
        lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
    except ValueError as e:
        parser.error(f"--lengths: {e}")
    if not lengths or any(x < 1 for x in lengths):
        parser.error("--lengths: multiples of the budget must be >= 1")
    arms = None if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms or () if a not in CHAT_ARMS]
    if bad or arms == []:
        parser.error(f"--arms {','.join(bad)}: with --chat the arms are {','.join(CHAT_ARMS)}")
    if args.checkpoint.is_file() or not args.checkpoint.exists():
        what = "a file" if args.checkpoint.is_file() else "not found"
        parser.error(f"--checkpoint {args.checkpoint}: {what}; --chat needs a nanochat chat checkpoint directory "
                     f"($NANOCHAT_BASE_DIR/chatsft_checkpoints/TAG)")
    if args.checkpoint.resolve().parent.name == "base_checkpoints":
        parser.error(f"--checkpoint {args.checkpoint}: a base checkpoint has not learnt nanochat's chat format; "
                     f"--chat needs the run's chatsft_checkpoints/TAG (or mid_checkpoints/TAG)")
    return lengths, arms


class _Refusing(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def chat_flags(text: str) -> dict[str, Any]:
    """The knobs ``--chat-flags`` gives the MC arm (``chat_cli --mc`` flags, e.g. ``--mc_refocus_every 16``),
    or ``ConfigError``."""
    parser = _Refusing(prog="--chat-flags", add_help=False)
    register_arguments(parser)
    try:
        ns = parser.parse_args(shlex.split(text))
    except ConfigError as e:
        raise ConfigError(f"--chat-flags: {e}") from None
    fixed = sorted(explicit_knobs(ns) & {*EVALUATION_FLAGS, "mc_wc_budget"})
    if fixed:
        raise ConfigError(f"--chat-flags {' '.join('--' + k for k in fixed)}: set by the evaluation (the budget is "
                          f"--budget; sessions are unnamed, in RAM, without telemetry)")
    return {k: getattr(ns, k) for k in explicit_knobs(ns)}


def unheld(engine: ChatEngine, conversations: dict[int, list[ChatConversation]]) -> dict[int, str]:
    """The lengths (``x``) with a conversation that a session cannot lay out at some point of its answer,
    and why. A session lays out a long prompt by recency in ``W`` minus its headroom; whether a history
    fits depends on how its length aligns with the blocks, so every length from the shortest prompt
    to the longest prompt plus a whole answer is tried."""
    s = engine.settings
    out: dict[int, str] = {}
    for x, convs in conversations.items():
        lo, hi = min(c.num_tokens for c in convs), max(c.num_tokens for c in convs) + engine.max_tokens
        for n in range(lo, hi + 1):
            try:
                WorkingContext.recency(n, s.budget - s.headroom, s.block_size, recent_tokens=s.protected,
                                       max_level=s.max_level)
            except WorkingContextError:
                out[x] = (f"a session at budget {s.budget} lays out a prompt in {s.budget - s.headroom} entries "
                          f"(headroom {s.headroom}: --mc_wc_headroom/--mc_refocus_every), too few for a history of "
                          f"{n} tokens with a raw tail of {s.protected} and blocks of {s.block_size} (the "
                          f"conversations at {x}x and their answers take {lo}..{hi} tokens)")
                break
    return out


def _held(parser: argparse.ArgumentParser, engine: ChatEngine, conversations: dict[int, list[ChatConversation]],
          explicit: bool) -> dict[int, list[ChatConversation]]:
    """The lengths a session can hold; one asked for explicitly that it cannot is an error line, a default
    one is left out with a line."""
    dropped = unheld(engine, conversations)
    if dropped and explicit:
        parser.error(f"--lengths {','.join(map(str, dropped))}: {next(iter(dropped.values()))}; use shorter "
                     f"lengths, a larger --budget, or fewer entries of headroom (--chat-flags '--mc_refocus_every N')")
    for x, why in dropped.items():
        print(f"length {x}x left out: {why}")
    if len(dropped) == len(conversations):
        parser.error(f"--budget {engine.budget}: no length can be held ({next(iter(dropped.values()))})")
    return {x: c for x, c in conversations.items() if x not in dropped}


def evaluate_chat(engine: ChatEngine, conversations: dict[int, list[ChatConversation]], arms: Sequence[str],
                  sequence_len: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per (arm, length) and every answer; ``conversations`` by length multiple ``x``."""
    rows: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    encode = engine.tokenizer.encode
    for x, convs in conversations.items():
        ids = [prompt_ids(c.messages, encode, engine.chat) for c in convs]
        record = [{"length_x": x, "index": i, "kind": c.kind, "fact": c.fact, "tokens": len(p), "answers": {}}
                  for i, (c, p) in enumerate(zip(convs, ids, strict=True))]
        base = {"length_x": x, "length_tokens": x * engine.budget, "chat_docs": len(convs),
                "chat_tokens": sum(map(len, ids)) / len(ids)}
        for arm in arms:
            if arm == "full" and any(len(p) + engine.max_tokens > sequence_len for p in ids):
                rows.append({"arm": arm, **base, "chat_acc": None, "chat_correct": None,
                             "note": f"does not fit sequence_len {sequence_len}"})
                continue
            right: dict[str, list[bool]] = {k: [] for k in KINDS}
            decoded, raw = 0, []
            for c, p, rec in zip(convs, ids, record, strict=True):
                tokens, by_megacontext = engine.answer(arm, p)
                text = engine.tokenizer.decode(tokens)
                rec["answers"][arm] = text
                right[c.kind].append(fact_found(text, c.fact))
                decoded += by_megacontext
                if arm == "mc" and by_megacontext:
                    rec["fact_raw"] = engine.fact_raw(fact_span(c.messages, c.fact, encode))
                    raw.append((rec["fact_raw"], right[c.kind][-1]))
            correct = sum(sum(v) for v in right.values())
            row = {"arm": arm, **base, "chat_acc": correct / len(convs), "chat_correct": correct,
                   "chat_acc_by_kind": {k: sum(v) / len(v) for k, v in right.items() if v}}
            if arm == "mc":
                row["mc_decoded"] = decoded
                if raw:
                    row["fact_raw"] = sum(r for r, _ in raw) / len(raw)
                    held = [ok for r, ok in raw if r]
                    row["fact_raw_acc"] = sum(held) / len(held) if held else None
            rows.append(row)
        answers += record
    return rows, answers


def format_chat_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    cols = ["arm", "length_x", "chat_tokens", "chat_acc", "chat_correct", "chat_docs", *KINDS, "mc_decoded",
            "fact_raw", "fact_raw_acc"]
    head = (f"chat eval: budget W={s['budget']}, model window {s['sequence_len']}, {s['tokens']}, greedy answers "
            f"of at most {s['answer_tokens']} tokens, {s['chat_docs']} conversations per length, seed {s['seed']}")
    cells = [[format_cell(r.get(c, r.get("chat_acc_by_kind", {}).get(c))) for c in cols] for r in result["rows"]]
    for row in cells:
        row[2] = f"{float(row[2]):.0f}"
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [head, "", "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append("chat_acc: the answer holds the planted fact as a whole word; passkey/name/number: chat_acc per kind; "
                 "fact_raw: the mc session held the fact raw; fact_raw_acc: right where it did")
    return "\n".join(lines)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The chat arm from ``eval long-context``'s parsed flags (see the module docstring)."""
    lengths, arms = check_flags(args, parser)
    overrides = {knob: getattr(args, dest) for dest, knob in ALLOCATOR_FLAGS.items() if getattr(args, dest) is not None}
    try:
        overrides |= chat_flags(args.chat_flags or "")
        MCConfig(**overrides)
    except ConfigError as e:
        parser.error(str(e))
    docs = args.chat_docs or DEFAULT_CHAT_DOCS
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    try:
        nc = nanochat_checkpoint.load(args.checkpoint, args.step)
    except CheckpointError as e:
        parser.error(f"--checkpoint {e}")
    if not nc.trained_with_mc:
        if arms is not None and "mc" in arms:
            parser.error(f"--arms mc: {args.checkpoint} step {nc.step} was trained without --mc (no "
                         f"megacontext_{nc.step:06d}.pt), so there is no GistNet/LensNet to run it with; use "
                         f"--arms truncation,full")
        arms = arms or [a for a in CHAT_ARMS if a != "mc"]
        print(f"{args.checkpoint} step {nc.step}: trained without --mc, so the chat arms are {','.join(arms)}")
    arms = arms or list(CHAT_ARMS)
    gpt, seq_len = nc.model.gpt, int(nc.model.config.sequence_len)
    budget = args.budget or nc.budget
    if not ANSWER_TOKENS < budget <= seq_len:
        parser.error(f"--budget {budget}: the chat arm needs {ANSWER_TOKENS} tokens for the answer < budget <= "
                     f"the model's window {seq_len}")
    engine = ChatEngine(gpt, nc.tokenizer, budget)
    codec = tokenizer_codec(nc.tokenizer)
    conversations = {x: make_conversations(args.seed, x * budget, docs, engine.count_tokens, codec.chars_per_token)
                     for x in lengths}
    mc_flags = chat_cli_flags(nc.nets.cfg, budget, overrides) if "mc" in arms else None
    try:
        if mc_flags is not None:
            engine.open_megacontext(args.checkpoint, nc.step, mc_flags)
            conversations = _held(parser, engine, conversations, explicit=args.lengths != parser.get_default("lengths"))
        t0 = time.perf_counter()
        with torch.no_grad():
            rows, answers = evaluate_chat(engine, conversations, arms, seq_len)
    finally:
        engine.close()
    lengths = list(conversations)
    result = {"chat": True, "rows": rows, "answers": answers, "checkpoint": str(args.checkpoint),
              "recipe": nc.recipe, "seconds": time.perf_counter() - t0,
              "settings": {"budget": budget, "lengths_x": lengths, "arms": arms, "chat_docs": docs,
                           "seed": args.seed, "answer_tokens": ANSWER_TOKENS, "sequence_len": seq_len,
                           "tokens": codec.name, "kinds": list(KINDS), "chat_cli_flags": mc_flags,
                           "scoring": "the planted fact appears in the greedy answer as a whole word"}}
    print(format_chat_table(result))
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
