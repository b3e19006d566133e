"""What ``base_eval --mc`` and ``chat_eval --mc`` add after upstream's numbers: the post-run validation
(``nanochat_model.validate``) printed as a table, and a MegaContext section in nanochat's report
with that table, its plot, the training curves of the run's telemetry and the knobs.

Files: ``{report_dir}/megacontext/validation-{source}.json`` and ``.png``, ``training-curves.png``.
The text goes under a ``### MegaContext`` heading at the end of the section the script has just
logged (``base-model-evaluation.md``, ``chat-evaluation-{source}.md``), so ``nanochat.report
generate`` shows it beside upstream's numbers with no change of its own, and ``reset`` removes it
with upstream's. Nothing in it names an upstream metric (the report's summary greps for those).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..telemetry import default_telemetry_dir
from ..training.controller import MCController
from . import run_report
from .nanochat_model import ValidationSettings, markdown_table, text_table, validate

ALWAYS_SHOWN = ("block_size", "mc_horizon", "mc_wc_budget", "mc_train_wc_length", "allocator_recent_tokens",
                "mc_eval_lengths", "mc_eval_samples", "mc_eval_seed")
"""Knobs the section always lists; the others only where the run changed them."""


def settings_from(controller: MCController) -> ValidationSettings:
    cfg = controller.cfg
    lengths = tuple(int(p) for p in cfg.mc_eval_lengths.split(","))
    return ValidationSettings(lengths=lengths, samples=cfg.mc_eval_samples, recall_docs=cfg.mc_eval_samples,
                              seed=cfg.mc_eval_seed)


def knobs_used(controller: MCController) -> dict[str, Any]:
    """The knobs the run changed from their defaults, and the few that define the validation."""
    from ..config import MCConfig

    defaults, now = MCConfig().as_dict(), controller.cfg.as_dict()
    return {k: v for k, v in now.items() if k in ALWAYS_SHOWN or (v != defaults.get(k) and k != "mc")}


def post_run_validation(model: nn.Module, tokenizer: Any, controller: MCController, source: str,
                        report: Any) -> dict[str, Any]:
    """Run, print, write the files and log the report section; returns the validation result."""
    result = validate(model, tokenizer, controller, settings_from(controller))
    result["source"] = source
    print(text_table(result))
    report_dir = Path(getattr(report, "report_dir", "") or ".")
    images: list[Path] = []
    out = report_dir / "megacontext"
    if hasattr(report, "report_dir"):  # rank 0 (nanochat's DummyReport elsewhere): write the files
        out.mkdir(parents=True, exist_ok=True)
        (out / f"validation-{source}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        png = run_report.plot_validation(result, out / f"validation-{source}.png")
        images += [png] if png is not None else []
    cfg = controller.cfg
    runs = run_report.latest_runs(Path(cfg.mc_telemetry_dir) if cfg.mc_telemetry_dir else default_telemetry_dir())
    if hasattr(report, "report_dir"):
        curves = run_report.plot_curves({stage: run_report.read_curves(p) for stage, p in runs.items()},
                                        out / "training-curves.png")
        images += [curves] if curves is not None else []
    body = run_report.section(source, knobs_used(controller), markdown_table(result), images, report_dir, runs)
    section_file = report_dir / host_section_file(source)
    if hasattr(report, "report_dir") and section_file.is_file():
        with open(section_file, "a", encoding="utf-8") as f:
            f.write("### MegaContext\n\n" + body + "\n")
        print(f"megacontext: validation added to {section_file}")
    return result


def host_section_file(source: str) -> str:
    """The report section the host script logged just before (nanochat's ``Report.log`` slug)."""
    title = "Base model evaluation" if source == "base" else f"Chat evaluation {source}"
    return title.lower().replace(" ", "-") + ".md"


