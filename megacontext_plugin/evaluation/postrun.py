"""What ``base_eval --mc`` and ``chat_eval --mc`` add after upstream's numbers: the post-run validation
(:func:`validate`: every arm through ``nanochat_model.NanochatArms``) printed as a table, and a
MegaContext section in nanochat's report with that table, its plot, the training curves of the run's
telemetry and the knobs.

Files: ``{report_dir}/megacontext/validation-{source}.json`` and ``.png``, ``training-curves.png``.
The text goes under a ``### MegaContext`` heading at the end of the section the script has just
logged (``base-model-evaluation.md``, ``chat-evaluation-{source}.md``), so ``nanochat.report
generate`` shows it beside upstream's numbers with no change of its own, and ``reset`` removes it
with upstream's. Nothing in it names an upstream metric (the report's summary greps for those).

Where nanochat writes no report (master, ``report=None``), :class:`RunReport` is the plugin's own in the same
form, beside the checkpoints (``$NANOCHAT_BASE_DIR/report``): a section file per validated stage and a
``report.md`` rebuilt from them after each validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import MCConfig
from ..focus import PROMPT_ROUNDS
from ..nets import AuxNets
from ..telemetry import default_telemetry_dir
from . import run_report
from .arms import unheld_lengths, unheld_reason
from .bands import check_bands
from .codec import tokenizer_codec
from .long_context import evaluate
from .nanochat_model import NanochatArms, validation_budget
from .report import format_cell


class RunReport:
    """A run's report directory (``$NANOCHAT_BASE_DIR/report``): upstream's ``nanochat.report.Report`` where
    nanochat has one (the pin), else the plugin's own (master has none), which writes a section in the same
    form (``## title``, then ``- key: value`` lines) and rebuilds ``report.md`` from its sections."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = str(report_dir)
        try:
            from nanochat.report import Report
        except ImportError:
            self._upstream = None
        else:
            self._upstream = Report(str(report_dir))

    @property
    def own(self) -> bool:
        """True where the report is the plugin's (nanochat has no ``nanochat.report``)."""
        return self._upstream is None

    def log(self, section: str, data: list[dict[str, Any]]) -> None:
        if self._upstream is not None:
            self._upstream.log(section=section, data=data)
            return
        Path(self.report_dir).mkdir(parents=True, exist_ok=True)
        lines = [f"## {section}", ""] + [f"- {k}: {v}" for item in data for k, v in item.items()]
        (Path(self.report_dir) / section_file_name(section)).write_text("\n".join(lines) + "\n\n")

    def generate(self) -> Path:
        """The plugin's own ``report.md``: its sections in the stages' order (upstream's ``report generate``
        does this where nanochat has a report)."""
        out = Path(self.report_dir)
        parts = ["# MegaContext report", "",
                 "nanochat at this commit writes no report of its own: its scripts print their numbers (the recipes "
                 "keep what they printed in `log.txt` here). These are the MegaContext validations of the run's "
                 "checkpoints.", ""]
        for source in STAGES:
            f = out / host_section_file(source)
            if f.is_file():
                parts.append(f.read_text(encoding="utf-8"))
        tmp = out / "report.md.tmp"
        tmp.write_text("\n".join(parts), encoding="utf-8")
        os.replace(tmp, out / "report.md")
        return out / "report.md"


STAGES = ("base", "mid", "sft", "rl")
"""The sources of nanochat's stages in training order (``base_eval``, ``chat_eval -i mid|sft|rl``)."""


def report_beside(checkpoint_dir: str | os.PathLike[str]) -> RunReport:
    """The report of the run a checkpoint directory belongs to (``BASE/base_checkpoints/d4`` -> ``BASE/report``)."""
    return RunReport(Path(checkpoint_dir).resolve().parent.parent / "report")


def log_host_section(report: Any, source: str, data: dict[str, Any]) -> None:
    """Log the stage's section where the host logged none (an offline SFT checkpoint, master's scripts), so the
    MegaContext section has one to join; ``data``: what the section says instead of upstream's numbers."""
    section_file = Path(report.report_dir) / host_section_file(source)
    if not section_file.is_file():
        report.log(section_title(source), [data])


@dataclass(frozen=True)
class ValidationSettings:
    """The post-run validation's size (``--mc_eval_*`` knobs): small by default, so CPU runs stay quick."""

    lengths: tuple[int, ...] = (2, 4)
    depths: tuple[float, ...] = (0.25, 0.75)
    samples: int = 2
    recall_docs: int = 2
    lens_docs: int = 0
    rounds: int = PROMPT_ROUNDS
    seed: int = 4321
    """Held out: the corpus and task generators of a run use other seeds (``megacontext corpus`` 0, ``tasks`` 0)."""


@torch.no_grad()
def validate(gpt: nn.Module, tokenizer: Any, nets: AuxNets,
             settings: ValidationSettings = ValidationSettings()) -> dict[str, Any]:
    """Every arm on held-out seeded documents tokenized with the run's tokenizer, at the checkpoint's
    budget; the result of ``long_context.evaluate`` (rows per arm and length) plus ``budget``.
    ``nets``: the run's aux nets (``MCController.nets`` during training), back in their mode after."""
    modules = (gpt, nets.gistnet, nets.lensnet)
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        budget = validation_budget(nets)
        cfg = nets.cfg
        geometry = {"budget": budget, "horizon": cfg.mc_horizon, "block_size": cfg.block_size,
                    "recent": nets.prompt_recent}
        dropped = dict(unheld_lengths(settings.lengths, slack=0.25, **geometry))
        if dropped:
            x, need = next(iter(dropped.items()))
            print(f"megacontext: --mc_eval_lengths {','.join(f'{d}x' for d in dropped)} left out: "
                  f"{unheld_reason(x, need, **geometry)}")
        lengths = [x for x in settings.lengths if x not in dropped]  # none left: the table says so by its emptiness
        return evaluate(NanochatArms(gpt), nets, budget=budget, lengths=lengths,
                        depths=settings.depths, samples=settings.samples, recall_docs=settings.recall_docs,
                        lens_docs=settings.lens_docs, horizon=cfg.mc_horizon, arms=("truncation",
                        "uniform", "mc", "full"), rounds=settings.rounds, seed=settings.seed,
                        codec=tokenizer_codec(tokenizer))
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


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


ALWAYS_SHOWN = ("block_size", "mc_horizon", "mc_wc_budget", "mc_train_wc_length", "allocator_recent_tokens",
                "mc_eval_lengths", "mc_eval_samples", "mc_eval_seed")
"""Knobs the section always lists; the others only where the run changed them."""


def settings_from(cfg: MCConfig) -> ValidationSettings:
    lengths = tuple(int(p) for p in cfg.mc_eval_lengths.split(","))
    return ValidationSettings(lengths=lengths, samples=cfg.mc_eval_samples, recall_docs=cfg.mc_eval_samples,
                              seed=cfg.mc_eval_seed)


def knobs_used(cfg: MCConfig) -> dict[str, Any]:
    """The knobs the run changed from their defaults, and the few that define the validation."""
    defaults, now = MCConfig().as_dict(), cfg.as_dict()
    return {k: v for k, v in now.items() if k in ALWAYS_SHOWN or (v != defaults.get(k) and k != "mc")}


def post_run_validation(model: nn.Module, tokenizer: Any, nets: AuxNets, source: str,
                        report: Any) -> dict[str, Any]:
    """Run, print, write the files and log the report section; returns the validation result."""
    cfg = nets.cfg
    result = validate(model, tokenizer, nets, settings_from(cfg))
    result["source"] = source
    print(text_table(result))
    bands = check_bands(result)
    result["bands"] = [b.as_dict() for b in bands]
    for band in bands:
        print(f"megacontext: band {band.line()}")
    report_dir = Path(getattr(report, "report_dir", "") or ".")
    images: list[Path] = []
    out = report_dir / "megacontext"
    if hasattr(report, "report_dir"):  # rank 0 (nanochat's DummyReport elsewhere): write the files
        out.mkdir(parents=True, exist_ok=True)
        (out / f"validation-{source}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        png = run_report.plot_validation(result, out / f"validation-{source}.png")
        images += [png] if png is not None else []
    runs = run_report.latest_runs(Path(cfg.mc_telemetry_dir) if cfg.mc_telemetry_dir else default_telemetry_dir())
    if hasattr(report, "report_dir"):
        curves = run_report.plot_curves({stage: run_report.read_curves(p) for stage, p in runs.items()},
                                        out / "training-curves.png")
        images += [curves] if curves is not None else []
    body = run_report.section(source, knobs_used(cfg), markdown_table(result), images, report_dir, runs,
                              bands=[b.line() for b in bands])
    section_file = report_dir / host_section_file(source)
    if hasattr(report, "report_dir") and section_file.is_file():
        with open(section_file, "a", encoding="utf-8") as f:
            f.write("### MegaContext\n\n" + body + "\n")
        print(f"megacontext: validation added to {section_file}")
    if isinstance(report, RunReport) and report.own:
        print(f"megacontext: report {report.generate()}")
    return result


def section_title(source: str) -> str:
    """The title of the report section the host script logs for ``source`` (``base_eval``, ``chat_eval -i``)."""
    return "Base model evaluation" if source == "base" else f"Chat evaluation {source}"


def section_file_name(title: str) -> str:
    """nanochat's ``Report.log`` file name for a section title."""
    return title.lower().replace(" ", "-") + ".md"


def host_section_file(source: str) -> str:
    """The report section the host script logged just before."""
    return section_file_name(section_title(source))


