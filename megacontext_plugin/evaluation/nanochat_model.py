"""The long-context evaluation's arms through a (patched) nanochat ``GPT``, and the post-run validation
that ``base_eval --mc`` and ``chat_eval --mc`` print and log to nanochat's report.

:class:`NanochatArms` gives ``evaluation.arms.ArmRunner`` the interface it expects of a model
(``wte``, ``head_dim``, ``config.sequence_len``, ``forward(inputs_embeds=, cos_sin=, value_ids=)``)
by calling ``GPT.forward_embeds`` (the patch's pure-tensor forward): the arms build their inputs
with ``context.inputs.model_inputs`` exactly as for the tiny models, training and chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..training.controller import MCController
from .arms import unheld_lengths, unheld_reason
from .codec import tokenizer_codec
from .long_context import evaluate
from .report import format_cell


class NanochatArms(nn.Module):
    """A view of nanochat's ``GPT`` for ``ArmRunner`` (no parameters of its own)."""

    uses_value_ids = True

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config
        self.head_dim = gpt.config.n_embd // gpt.config.n_head
        self.wte = gpt.transformer["wte"] if hasattr(gpt, "transformer") else gpt.wte

    def forward(self, *, inputs_embeds: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
                value_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, W, vocab]`` of ``inputs_embeds [R, W, D]`` (``value_ids [R, W]``, -1 = none)."""
        W = inputs_embeds.shape[1]
        cos, sin = cos_sin if cos_sin is not None else (self.gpt.cos[:, :W], self.gpt.sin[:, :W])
        dtype = self.gpt.cos.dtype
        return self.gpt.forward_embeds(inputs_embeds, value_ids.to(inputs_embeds.device), None,
                                       cos.to(dtype), sin.to(dtype))


@dataclass(frozen=True)
class ValidationSettings:
    """The post-run validation's size (``--mc_eval_*`` knobs): small by default, so CPU runs stay quick."""

    lengths: tuple[int, ...] = (2, 4)
    depths: tuple[float, ...] = (0.25, 0.75)
    samples: int = 2
    recall_docs: int = 2
    lens_docs: int = 0
    rounds: int = 4
    seed: int = 4321
    """Held out: the corpus and task generators of a run use other seeds (``megacontext corpus`` 0, ``tasks`` 0)."""


def validation_budget(controller: MCController) -> int:
    """The checkpoint's budget: ``--mc_wc_budget`` if set, else the final curriculum budget of a
    sequence as long as the model's window (what the aux nets were trained at)."""
    if controller.cfg.mc_wc_budget:
        return min(controller.cfg.mc_wc_budget, controller.sequence_len)
    return controller.budget_at(controller.total_steps, controller.sequence_len)


@torch.no_grad()
def validate(gpt: nn.Module, tokenizer: Any, controller: MCController,
             settings: ValidationSettings = ValidationSettings()) -> dict[str, Any]:
    """Every arm on held-out seeded documents tokenized with the run's tokenizer, at the checkpoint's
    budget; the result of ``long_context.evaluate`` (rows per arm and length) plus ``budget``."""
    was_training, ctrl_training = gpt.training, controller.training
    gpt.eval()
    controller.eval()
    try:
        budget = validation_budget(controller)
        cfg = controller.cfg
        geometry = {"budget": budget, "horizon": cfg.mc_horizon, "block_size": cfg.block_size,
                    "recent": int(controller.prompt_recent)}
        dropped = dict(unheld_lengths(settings.lengths, slack=0.25, **geometry))
        if dropped:
            x, need = next(iter(dropped.items()))
            print(f"megacontext: --mc_eval_lengths {','.join(f'{d}x' for d in dropped)} left out: "
                  f"{unheld_reason(x, need, **geometry)}")
        lengths = [x for x in settings.lengths if x not in dropped]  # none left: the table says so by its emptiness
        return evaluate(NanochatArms(gpt), controller, budget=budget, lengths=lengths,
                        depths=settings.depths, samples=settings.samples, recall_docs=settings.recall_docs,
                        lens_docs=settings.lens_docs, horizon=controller.cfg.mc_horizon, arms=("truncation",
                        "uniform", "mc", "full"), rounds=settings.rounds, seed=settings.seed,
                        codec=tokenizer_codec(tokenizer))
    finally:
        gpt.train(was_training)
        controller.train(ctrl_training)


COLUMNS = (("arm", "arm"), ("length_x", "length (x W)"), ("length_tokens", "tokens"), ("passkey_acc", "passkey"),
           ("recall_acc", "recall"), ("nll_h", "NLL@H"), ("delta_nll_h", "ΔNLL@H vs full"),
           ("delta_trunc", "ΔNLL@H vs truncation"), ("swap_rate", "swap rate"), ("residency", "residency"))


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's rows with ``delta_trunc`` (NLL@H minus truncation's at the same length) added."""
    trunc = {r["length_x"]: r.get("nll_h") for r in result["rows"] if r["arm"] == "truncation"}
    out = []
    for r in result["rows"]:
        t = trunc.get(r["length_x"])
        out.append(dict(r, delta_trunc=None if r.get("nll_h") is None or t is None else r["nll_h"] - t))
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The validation table (Markdown), one row per (arm, length)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in table_rows(result):
        lines.append("| " + " | ".join(format_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def text_table(result: dict[str, Any]) -> str:
    """The same table for a terminal, with a title line naming the budget and the documents."""
    rows = [[title for _, title in COLUMNS]] + [[format_cell(r.get(k)) for k, _ in COLUMNS] for r in table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    s = result["settings"]
    head = (f"MegaContext validation: budget W={s['budget']} entries, K={s['block_size']}, H={s['horizon']}, "
            f"window {s['sequence_len']}, {s['tokens']}, seed {s['seed']}")
    body = ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([head, *body[:1], "  ".join("-" * w for w in widths), *body[1:]])
