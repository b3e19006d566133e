"""``megacontext eval train-tiny --out DIR``: the tiny byte-level models the quality evaluation needs.

A reproducible CPU recipe (seeded data from ``data.tasks``, seeded init, fixed step counts):

1. **plain** (``--plain-steps``): a ``TinyGPT`` (vocab 256, bytes) learns the tasks with full
   attention on documents of ``--plain-len`` tokens: passkey and associative-recall documents
   (half each, depths uniform), next-token loss on every position plus ``--answer-weight`` x
   the mean loss on the answer digits (5 of ~256 tokens otherwise carry almost no signal: with
   plain next-token loss only, 1,200 steps left the full-attention passkey at chance). The
   first ``--plain-short-steps`` use documents of half the length: retrieval appears as a
   sudden drop of the loss, whose step varies with the initialisation, and fewer distractors
   bring it earlier (D24).
2. **mc** (``--mc-steps``): the same model trains with the ``MCController`` on documents of
   ``--mc-len`` tokens (the tasks again, the answer at the end, so it is in the ``H``-token
   tail where ΔNLL is measured): the token loss over the baseline, on-policy, teacher and random
   working-context variants, GistNet's substitutability loss, LensNet's preference loss and its
   distillation of the teacher's saliency; the curriculum
   anneals the budget to ``--mc_train_wc_length`` of the window over the first
   ``--mc_anneal_fraction`` of the phase. Each step also takes a plain full-attention step on
   ``--mix-batch`` documents of the same length, so the full-attention arm (the upper bound)
   stays trained.

The MegaContext knobs it trains with are the config's own flags (``--block_size``,
``--mc_horizon``, ``--allocator_recent_tokens``, ...), registered from its knob table with the
stand-in's defaults (``RECIPE_DEFAULTS``); the recipe's own flags are spelled with dashes.

Writes ``DIR/tiny.pt`` (``nets.tiny_checkpoint``'s format) and ``DIR/train_log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from ..checkpoint import read_state
from ..config import ALLOC, LENS, NETS, ConfigError, MCConfig, knob_fields, register_arguments
from ..data import tasks
from ..nets import tiny_checkpoint
from ..nets.output_head import head_on_last
from ..nets.tiny_gpt import TinyGPT, TinyGPTConfig
from .controller import MCController

MIN_TASK_LEN = 88
"""Bytes below which ``tasks.make_passkey``/``make_recall`` (the ``RECALL_SHAPE``) cannot write a document."""

PLAIN_FORMAT = "megacontext-eval-tiny-plain/1"
"""``DIR/plain.pt``: the model, optimizer and data generator after the plain phase (``--from-plain``)."""

TRAINED_KNOBS: tuple[str, ...] = tuple(
    f.name for f in knob_fields()
    if f.metadata["group"] in (LENS, ALLOC, NETS) or f.name in (
        "block_size", "mc_horizon", "mc_train_wc_length", "mc_anneal_fraction", "mc_num_random_variants",
        "mc_onpolicy_variants", "mc_teacher_variants", "mc_teacher_every", "mc_max_counterfactuals",
        "mc_gist_loss_weight", "mc_position_scheme", "mc_rope_gist_sigma", "mc_aux_lr", "mc_aux_dtype"))
"""The knobs train-tiny takes as flags: those its controller, nets and on-policy allocator read
while training (and the checkpoint keeps). Not offered: ``--mc`` (always on), ``--mc_seed``
(``--seed`` seeds everything), and knobs of storage, inference, base_train's schedule, telemetry
and the post-run validation, which this recipe never reads."""

RECIPE_DEFAULTS: dict[str, Any] = {
    "block_size": 8, "allocator_recent_tokens": 16, "mc_horizon": 16,
    "mc_train_wc_length": 0.125, "mc_anneal_fraction": 0.15,
    "mc_num_random_variants": 2, "mc_onpolicy_variants": 1, "mc_teacher_variants": 2,
    "allocator_expand_neighbours": 1, "allocator_expand_threshold": 0.1, "allocator_collapse_threshold": 0.3,
    "mc_lens_teacher_weight": 1.0, "mc_aux_lr": 2e-3, "gistnet_layers": 1, "lensnet_layers": 1, "lensnet_dim": 64,
}
"""The stand-in's measured recipe (README, D25-D27): W = 64 of its 512-token window annealed over
the first 15% of the MC phase, K = 8, the prompt's raw tail 16, H = 16, small aux nets. Each knob
the recipe was measured with is pinned here, also where it equals the product's default, so a
change of the product's default does not change the stand-in."""


def build(model_config: TinyGPTConfig, cfg: MCConfig, total_steps: int = 1) -> tuple[TinyGPT, MCController]:
    """A fresh TinyGPT and the training controller of its aux nets (``ctrl.nets`` is what the arms read)."""
    model = TinyGPT(model_config)
    ctrl = MCController(cfg, dim=model_config.n_embd, head_dim=model_config.n_embd // model_config.n_head,
                        sequence_len=model_config.sequence_len, total_steps=total_steps)
    return model, ctrl


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``megacontext eval train-tiny``."""
    p_tt = sub.add_parser("train-tiny", help="train the tiny byte-level model and aux nets the evaluation uses",
                          description=__doc__.splitlines()[0],
                          usage="megacontext eval train-tiny --out DIR [--OPTION VALUE ...] [--KNOB VALUE ...]")
    add_arguments(p_tt)
    p_tt.set_defaults(func=lambda a: run(a, p_tt))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="directory for tiny.pt and train_log.jsonl")
    p.add_argument("--plain-len", type=int, default=256)
    p.add_argument("--plain-steps", type=int, default=1600)
    p.add_argument("--plain-batch", type=int, default=16)
    p.add_argument("--plain-short-steps", type=int, default=800,
                   help="the first N plain steps use documents of half --plain-len, twice as many (the same "
                        "tokens per step): retrieval is learned at the shorter length first")
    p.add_argument("--mc-len", type=int, default=512, help="also the model's sequence_len")
    p.add_argument("--mc-steps", type=int, default=1200)
    p.add_argument("--mc-batch", type=int, default=8)
    p.add_argument("--mix-batch", type=int, default=4, help="plain documents per MC step (0: none)")
    p.add_argument("--answer-weight", type=float, default=1.0,
                   help="extra weight of the mean loss on answer digits (0: plain next-token loss)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default, every core; pass 1 on a machine shared with "
                        "other jobs)")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast on the CPU (auto: only where the CPU computes bf16 natively, avx512_bf16 "
                        "or amx_bf16, else fp32; bf16: always; off: never)")
    p.add_argument("--from-plain", type=Path, default=None,
                   help="start from the plain.pt an earlier run wrote (same model, data generator and optimizer "
                        "state: ablations of the MC phase share it); a larger --plain-steps continues the phase")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the data, the model's initialisation and the controller (--mc_seed)")
    p.add_argument("--log-every", type=int, default=25)
    register_arguments(p, only=TRAINED_KNOBS, defaults=RECIPE_DEFAULTS)


def tiny_config(args: argparse.Namespace) -> MCConfig:
    """The controller's config from the parsed knobs, MegaContext on and seeded by ``--seed``, checked
    against the window (``--mc-len``) here: a mistake is the user's, reported before anything is written."""
    cfg = MCConfig(mc=True, mc_seed=args.seed, **{name: getattr(args, name) for name in TRAINED_KNOBS})
    cfg.validate_for_model(args.mc_len)
    return cfg


def make_batch(rng: np.random.Generator, batch: int, length: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` task documents of exactly ``length + 1`` bytes (front-padded with spaces), as x, y,
    and ``answer[B, T]``: True where the target ``y`` is an answer digit (after the query)."""
    rows, masks = [], []
    for _ in range(batch):
        depth = float(rng.uniform(0, 1))
        if rng.uniform() < 0.5:
            doc = tasks.make_passkey(rng, num_chars=length + 1, depth=depth, digits=tasks.PASSKEY_DIGITS)
            start = doc.query_offset
        else:
            doc = tasks.make_recall(rng, num_chars=length + 1, depth=depth, **tasks.RECALL_SHAPE)
            start = doc.queries_offset
        pad = length + 1 - len(doc.text)
        text = " " * pad + doc.text
        rows.append(list(text.encode("utf-8")))
        masks.append([i >= pad + start and ch.isdigit() for i, ch in enumerate(text)])
    xy = torch.tensor(rows, dtype=torch.long)
    answer = torch.tensor(masks, dtype=torch.bool)
    return xy[:, :-1], xy[:, 1:], answer[:, 1:]


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, answer: torch.Tensor,
            weight: float) -> torch.Tensor:
    """Next-token loss on every position plus ``weight`` x the mean loss on the answer digits."""
    nll = model(x, y, loss_reduction="none").float().view_as(y)
    return nll.mean() + weight * nll[answer].sum() / answer.sum().clamp_min(1)


def _fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr, exit 2."""
    print(f"megacontext eval train-tiny: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux ``/proc/cpuinfo`` flags; False where unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _lr(step: int, total: int, peak: float, warmup: int = 30) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    if args.threads < 0:
        _fail(f"--threads {args.threads}: expected 0 (every core) or a positive count")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    use_bf16 = args.autocast == "bf16" or (args.autocast == "auto" and cpu_has_native_bf16())

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)

    try:
        cfg = tiny_config(args)
    except ConfigError as e:  # a knob out of range, or knobs that contradict each other: one line, exit 2
        _fail(str(e))
    if args.out.exists() and not args.out.is_dir():
        _fail(f"--out {args.out} is not a directory")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"--out {args.out} cannot be created ({e.strerror or e})")
    log_path = args.out / "train_log.jsonl"
    log = log_path.open("w")
    mcfg = TinyGPTConfig(vocab_size=256, sequence_len=args.mc_len, n_layer=args.layers, n_head=args.heads,
                         n_embd=args.width)
    model, ctrl = build(mcfg, cfg, total_steps=args.mc_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    print(f"train-tiny: TinyGPT {args.layers}x{args.width} bytes, window {args.mc_len}; plain {args.plain_steps} "
          f"steps at {args.plain_len}, MC {args.mc_steps} steps at {args.mc_len} -> budget "
          f"{math.floor(cfg.mc_train_wc_length * args.mc_len)}; "
          f"{'bf16 autocast' if use_bf16 else 'fp32'}, {torch.get_num_threads()} threads", flush=True)

    def emit(rec: dict) -> None:
        rec["elapsed_s"] = round(time.perf_counter() - t0, 1)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()), flush=True)

    def full_nll(emb_BTD: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        """The teacher's pass: full-context NLL on the sequence's own embeddings, of the horizon's
        positions (the only ones the teacher reads: ``nets.output_head``)."""
        y_BH = y_BT[:, -ctrl.cfg.mc_horizon:].contiguous()
        with head_on_last(model, y_BH.shape[1]):
            return model(inputs_embeds=emb_BTD, targets=y_BH, loss_reduction="none").float().view_as(y_BH)

    model.train()
    plain_done = 0
    if args.from_plain is not None:
        try:
            state = read_state(args.from_plain, what="a plain.pt written by train-tiny")
        except ValueError as e:
            _fail(f"--from-plain {e}")
        if state.get("format") != PLAIN_FORMAT:
            _fail(f"--from-plain {args.from_plain}: not a plain.pt written by train-tiny")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["data_rng"]
        plain_done = int(state["plain_steps"])
        args.plain_steps = max(args.plain_steps, plain_done)  # a larger --plain-steps continues the phase
        print(f"train-tiny: plain phase ({plain_done} steps) from {args.from_plain}; "
              f"{args.plain_steps - plain_done} more", flush=True)
    # the shortest document both tasks can be written in (make_batch adds one byte for the targets)
    short_len = min(args.plain_len, max(args.plain_len // 2, MIN_TASK_LEN))
    for step in range(plain_done, args.plain_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.plain_steps + args.mc_steps, args.lr)
        length = short_len if step < args.plain_short_steps else args.plain_len
        x, y, ans = make_batch(rng, round(args.plain_batch * args.plain_len / length), length)
        with autocast():
            loss = lm_loss(model, x, y, ans, args.answer_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.plain_steps - 1:
            emit({"phase": "plain", "step": step, "loss": loss.item()})

    if args.plain_steps > plain_done:
        torch.save({"format": PLAIN_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "data_rng": rng.bit_generator.state, "plain_steps": args.plain_steps}, args.out / "plain.pt")
    for step in range(args.mc_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(args.plain_steps + step, args.plain_steps + args.mc_steps, args.lr)
        x, y, ans = make_batch(rng, args.mc_batch, args.mc_len)
        with autocast():
            batch = ctrl.process_batch(x, y, model.wte, step, nll_fn=full_nll)
            nll = model(inputs_embeds=batch.inputs_RWD, targets=batch.targets_RW, cos_sin=batch.cos_sin,
                        loss_reduction="none")
        nll_RW = nll.float().view_as(batch.targets_RW)
        out = ctrl.compute_losses(batch, nll_RW)
        # the answer digits of every variant (entries whose target is one), weighted as in the plain phase
        ans_RW = ans.reshape(-1)[batch.index.target_RW] & (batch.targets_RW >= 0)
        total = out.total + args.answer_weight * nll_RW[ans_RW].sum() / ans_RW.sum().clamp_min(1)
        plain = torch.zeros(())
        if args.mix_batch > 0:
            xm, ym, am = make_batch(rng, args.mix_batch, args.mc_len)
            with autocast():
                plain = lm_loss(model, xm, ym, am, args.answer_weight)
            total = total + plain
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctrl.step_aux()
        if step % args.log_every == 0 or step == args.mc_steps - 1:
            m = out.metrics
            emit({"phase": "mc", "step": step, "budget": batch.budget, "plain_loss": plain.item(),
                  "token_loss": float(m["token_loss"]), "gist_loss": float(m["gist_loss"]),
                  "lens_loss": float(m["lens_loss"]), "teacher_kl": float(m["lens_teacher_kl"]),
                  "pref_corr": float(m["preference_corr_mean"])})
    ctrl.close()
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    recipe["train_seconds"] = round(time.perf_counter() - t0, 1)
    path = args.out / "tiny.pt"
    tiny_checkpoint.save(path, model, ctrl.cfg, ctrl.controller_state(), recipe)
    log.close()
    print(f"wrote {path} ({recipe['train_seconds']} s)")
    return 0
