"""The post-run validation and the report section (no nanochat needed: a GPT stand-in with
``forward_embeds`` and a byte tokenizer with a BOS)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

from megacontext_plugin.config import MCConfig
from megacontext_plugin.evaluation import run_report
from megacontext_plugin.evaluation.codec import BYTES, tokenizer_codec
from megacontext_plugin.evaluation.nanochat_model import validation_budget
from megacontext_plugin.evaluation.postrun import post_run_validation
from megacontext_plugin.nets import AuxNets
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.telemetry import TelemetryEvent, make_provider
from megacontext_plugin.training.controller import MCController

SEQ = 128


class GPTStandIn(nn.Module):
    """What the validation uses of nanochat's GPT: ``config``, ``transformer.wte``, ``cos``/``sin`` and
    ``forward_embeds(x, value_ids, targets=None, cos, sin) -> logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = TinyGPT(TinyGPTConfig(sequence_len=SEQ, vocab_size=258, n_layer=1, n_head=2, n_embd=32))
        self.config = SimpleNamespace(n_embd=32, n_head=2, sequence_len=SEQ)
        self.transformer = nn.ModuleDict({"wte": self.tiny.wte})
        self.cos, self.sin = self.tiny.cos, self.tiny.sin
        self.value_ids_seen: list[torch.Tensor] = []

    def forward_embeds(self, x, value_ids, targets, cos, sin):
        assert targets is None
        self.value_ids_seen.append(value_ids)
        return self.tiny(inputs_embeds=x, cos_sin=(cos, sin))


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def get_bos_token_id(self) -> int:
        return 257

    def get_vocab_size(self) -> int:
        return 258


class Report:
    """nanochat's Report as far as the hook uses it: the directory the sections live in."""

    def __init__(self, report_dir: Path) -> None:
        report_dir.mkdir(parents=True)
        self.report_dir = str(report_dir)


def _config(tmp_path: Path) -> MCConfig:
    return MCConfig(mc=True, block_size=4, mc_horizon=8, allocator_recent_tokens=8, gistnet_heads=2, gistnet_layers=1,
                    lensnet_dim=16, lensnet_heads=2, lensnet_layers=1, mc_eval_lengths="2,3", mc_eval_samples=1,
                    mc_telemetry_dir=str(tmp_path / "telemetry"))


def _nets(tmp_path: Path) -> AuxNets:
    """The aux nets the validation reads (a training run passes its ``MCController.nets``)."""
    return AuxNets.build(_config(tmp_path), dim=32, sequence_len=SEQ)


@pytest.mark.parametrize("knobs", [{}, {"mc_train_wc_length": 0.3, "mc_anneal_fraction": 0.5}, {"mc_wc_budget": 24}])
def test_the_validation_budget_is_the_controllers_last_budget(tmp_path: Path, knobs: dict) -> None:
    """``validation_budget`` reads the nets alone and gives what it gave from the controller:
    ``--mc_wc_budget`` when set, else the budget the controller reaches at its last step, whatever
    the run's length."""
    import dataclasses

    from megacontext_plugin.evaluation.nanochat_model import validation_budget

    cfg = dataclasses.replace(_config(tmp_path), **knobs)
    for total_steps in (1, 7, 1000):
        ctrl = MCController(cfg, dim=32, head_dim=16, sequence_len=SEQ, total_steps=total_steps)
        last = ctrl.budget_at(ctrl.total_steps, ctrl.sequence_len)
        assert validation_budget(ctrl.nets) == (min(cfg.mc_wc_budget, SEQ) if cfg.mc_wc_budget else last)
        ctrl.close()


def test_tokenizer_codec_puts_bos_first_and_reads_answers_back() -> None:
    codec = tokenizer_codec(ByteTokenizer())
    assert codec.prefix("ab").tolist() == [257, 97, 98]
    cont, n = codec.answer("123")
    assert cont.tolist() == list(b" 123.") and n == 4
    assert codec.predicted(list(b" 123"), n, "123") == "123"
    assert codec.chars_per_token == 1.0
    assert BYTES.prefix("ab").tolist() == [97, 98]  # the tiny models' documents: no BOS, as before


def test_post_run_validation_prints_the_table_and_logs_a_report_section(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    gpt, nets = GPTStandIn(), _nets(tmp_path)
    provider = make_provider("jsonl", tmp_path / "telemetry" / "base-20250101-000000-1")
    for step in (0, 5):
        provider.emit(TelemetryEvent("mc_batch_stats", {"variants_total": 12, "sequences": 2, "step": step,
                                                        "token_loss": 3.0 - step / 10, "lod_losses": [3.0, 3.5],
                                                        "lens_loss": 0.7, "delta_nll_h": 0.1}))
        provider.emit(TelemetryEvent("focus_allocator", {"expands": 1, "collapses": 0, "swap_rate": 0.1,
                                                         "residency": 0.9, "step": step}))
        provider.emit(TelemetryEvent("mc_timing", {"build_ms": 1, "positional_ms": 1, "lens_ms": 1,
                                                   "controller_ms": 20.0, "step": step}))
    provider.close()
    report = Report(tmp_path / "report")
    upstream = "## Base model evaluation\ntimestamp: 2025-01-01 00:00:00\n\n- CORE metric: 0.1\n\n"
    (tmp_path / "report" / "base-model-evaluation.md").write_text(upstream)
    result = post_run_validation(gpt, ByteTokenizer(), nets, "base", report)

    budget = validation_budget(nets)
    assert result["settings"]["budget"] == budget and result["settings"]["lengths_x"] == [2, 3]
    arms = {(r["arm"], r["length_x"]) for r in result["rows"]}
    assert arms == {(a, x) for a in ("truncation", "uniform", "mc", "full") for x in (2, 3)}
    assert any((v >= 0).any() for v in gpt.value_ids_seen)  # raw tokens carry their value-embedding id
    out = capsys.readouterr().out
    assert f"MegaContext validation: budget W={budget}" in out and "ΔNLL@H vs truncation" in out
    band_lines = [line.removeprefix("megacontext: band ") for line in out.splitlines() if "megacontext: band " in line]
    assert [line.split(":")[0].split(" ", 1)[1] for line in band_lines] == [
        "ΔNLL@H, MC - full, worst length", "swap rate", "residency"]
    assert band_lines[0].split()[0] in ("PASS", "WARN")  # a stand-in's refocus may make no swap: n/a there
    assert all(line.split()[0] in ("PASS", "WARN", "n/a") for line in band_lines[1:])
    assert f"at W={budget} it is indicative" in band_lines[0]

    section = (tmp_path / "report" / "base-model-evaluation.md").read_text()
    assert section.startswith(upstream + "### MegaContext\n")  # beside upstream's numbers, in its section
    body = section[len(upstream):]
    assert "CORE" not in body  # the report's summary greps upstream's metric names
    assert "| truncation | 2 |" in body and "ΔNLL@H vs full" in body and "`--mc_eval_lengths` | `2,3`" in body
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", body)
    assert links == ["megacontext/validation-base.png", "megacontext/training-curves.png"]
    assert all((tmp_path / "report" / link).stat().st_size > 0 for link in links)
    saved = json.loads((tmp_path / "report" / "megacontext" / "validation-base.json").read_text())
    assert saved["source"] == "base" and len(saved["rows"]) == 8
    assert [b["status"] for b in saved["bands"]] == [line.split()[0] for line in band_lines]
    assert all(f"- {line}" in body for line in band_lines)  # the report shows the bands under the table


def test_read_curves_takes_losses_probe_and_timing_from_the_jsonl(tmp_path: Path) -> None:
    provider = make_provider("jsonl", tmp_path / "mid-20250101-000000-1")
    provider.emit(TelemetryEvent("mc_batch_stats", {"variants_total": 4, "sequences": 1, "token_loss": 2.0,
                                                    "lod_losses": [2.0, 2.5, 3.0], "step": 3}))
    provider.emit(TelemetryEvent("focus_allocator", {"expands": 0, "collapses": 0, "swap_rate": 0.0,
                                                     "residency": 1.0, "step": 3}))
    provider.emit(TelemetryEvent("mc_timing", {"build_ms": 1, "positional_ms": 1, "lens_ms": 1, "step": 3}))
    provider.close()
    assert run_report.latest_runs(tmp_path) == {"mid": tmp_path / "mid-20250101-000000-1" / "telemetry.jsonl"}
    curves = run_report.read_curves(tmp_path / "mid-20250101-000000-1" / "telemetry.jsonl")
    assert curves == {"token_loss": [(3, 2.0)], "lod0_loss": [(3, 2.0)], "lod1_loss": [(3, 2.5)],
                      "lod2_loss": [(3, 3.0)], "swap_rate": [(3, 0.0)], "residency": [(3, 1.0)]}


EVAL_KNOBS = ["--mc", "--block_size", "4", "--mc_horizon", "8", "--allocator_recent_tokens", "8",
              "--gistnet_heads", "2", "--gistnet_layers", "1", "--lensnet_dim", "16", "--lensnet_heads", "2",
              "--lensnet_layers", "1", "--mc_eval_lengths", "2", "--mc_eval_samples", "1"]
"""An eval stage's --mc flags, small enough for the stand-in (``--mc_telemetry_dir`` added per test)."""


@pytest.fixture
def hooks() -> Iterator[tuple[Any, Any, Any]]:
    """``(pm, plugin, parser)``: the plugin registered as nanochat's hosts register it, its flags on ``parser``;
    reset and unregistered after the test."""
    import argparse

    import pluggy

    from megacontext_plugin import hookspecs
    from megacontext_plugin.plugin import MegaContextPlugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugin = MegaContextPlugin()
    pm.register(plugin)
    parser = argparse.ArgumentParser()
    pm.hook.register_arguments(parser=parser)
    try:
        yield pm, plugin, parser
    finally:
        plugin.reset()
        pm.unregister(plugin)


def test_evaluate_hook_validates_with_mc_and_does_nothing_without(tmp_path: Path, capsys, hooks) -> None:
    pm, plugin, parser = hooks
    report = Report(tmp_path / "report")
    (tmp_path / "report" / "chat-evaluation-sft.md").write_text("## Chat evaluation sft\n\n")
    off = parser.parse_args([])
    pm.hook.adjust_arguments(args=off, stage="eval")
    pm.hook.evaluate(model=GPTStandIn(), tokenizer=ByteTokenizer(), args=off, source="sft", report=report)
    assert plugin.controller is None and "MegaContext" not in capsys.readouterr().out
    on = parser.parse_args([*EVAL_KNOBS, "--mc_telemetry_dir", str(tmp_path / "none")])
    pm.hook.adjust_arguments(args=on, stage="eval")
    pm.hook.evaluate(model=GPTStandIn(), tokenizer=ByteTokenizer(), args=on, source="sft", report=report)
    assert plugin.controller is not None and plugin.monitor is None  # an eval stage trains nothing
    assert "MegaContext validation: budget W=" in capsys.readouterr().out
    assert "### MegaContext" in (tmp_path / "report" / "chat-evaluation-sft.md").read_text()


def test_without_nanochats_report_the_evaluate_hook_writes_the_plugins_own_beside_the_checkpoints(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, hooks) -> None:
    """nanochat master's base_eval and chat_eval pass ``report=None``: the validation goes into the run's report
    directory, in a section of its own and a ``report.md`` rebuilt from the sections."""
    import sys

    pm, _, parser = hooks
    monkeypatch.setitem(sys.modules, "nanochat.report", None)  # master: no nanochat.report to import
    monkeypatch.delenv("RANK", raising=False)
    checkpoint = tmp_path / "base" / "base_checkpoints" / "d2"
    on = parser.parse_args([*EVAL_KNOBS, "--mc_telemetry_dir", str(tmp_path / "none")])
    pm.hook.adjust_arguments(args=on, stage="eval")
    pm.hook.load_state(checkpoint_dir=str(checkpoint), step=7)  # the script's load_model, before setup
    pm.hook.evaluate(model=GPTStandIn(), tokenizer=ByteTokenizer(), args=on, source="base", report=None)
    report = tmp_path / "base" / "report"
    assert f"megacontext: report {report / 'report.md'}" in capsys.readouterr().out
    section = (report / "base-model-evaluation.md").read_text()
    assert section.startswith(f"## Base model evaluation\n\n- checkpoint: {checkpoint} step 7\n")
    assert "### MegaContext" in section and (report / "megacontext" / "validation-base.json").is_file()
    whole = (report / "report.md").read_text()
    assert whole.startswith("# MegaContext report\n") and section in whole


def test_validation_leaves_out_the_lengths_its_budget_cannot_hold(tmp_path: Path, capsys) -> None:
    import dataclasses

    from megacontext_plugin.evaluation.arms import unheld_lengths
    from megacontext_plugin.evaluation.nanochat_model import validation_budget
    from megacontext_plugin.evaluation.postrun import ValidationSettings, validate

    torch.manual_seed(0)
    gpt, nets = GPTStandIn(), _nets(tmp_path)
    nets.cfg = dataclasses.replace(nets.cfg, mc_wc_budget=24)
    geometry = {"budget": validation_budget(nets), "horizon": 8, "block_size": 4, "recent": nets.prompt_recent}
    unheld = [x for x, _ in unheld_lengths((1, 2, 3, 4, 5), slack=0.25, **geometry)]
    assert unheld and len(unheld) < 5  # some lengths fit this budget, some do not
    result = validate(gpt, ByteTokenizer(), nets, ValidationSettings(lengths=(1, 2, 3, 4, 5), samples=1,
                                                                    recall_docs=1, lens_docs=0))
    assert {r["length_x"] for r in result["rows"]} == {1, 2, 3, 4, 5} - set(unheld)
    assert f"--mc_eval_lengths {','.join(f'{x}x' for x in unheld)} left out" in capsys.readouterr().out


def _validation(budget: int, mc: list[dict[str, float]]) -> dict[str, object]:
    return {"settings": {"budget": budget}, "rows": [{"arm": "truncation", "length_x": 2, "delta_nll_h": 0.4},
                                                     *({"arm": "mc", "length_x": x, **m} for x, m in enumerate(mc))]}


def test_bands_pass_and_warn_as_the_guide_sets_them() -> None:
    from megacontext_plugin.evaluation.bands import check_bands

    inside = check_bands(_validation(8192, [{"delta_nll_h": 0.02, "swap_rate": 0.1, "residency": 0.95},
                                            {"delta_nll_h": 0.09, "swap_rate": 0.12, "residency": 0.97}]))
    assert [b.status for b in inside] == ["PASS", "PASS", "PASS"] and inside[0].value == 0.09
    assert inside[0].note == ""  # at the guide's W_max the band is the guide's own
    assert inside[1].line() == "PASS swap rate: 0.110 (band 0.05-0.20)"
    outside = check_bands(_validation(64, [{"delta_nll_h": 0.3, "swap_rate": 0.4, "residency": 0.5},
                                           {"delta_nll_h": -0.1, "swap_rate": 0.3, "residency": 0.7}]))
    assert [b.status for b in outside] == ["WARN", "WARN", "WARN"]  # the worst length, the means
    assert outside[0].value == 0.3 and "at W=64 it is indicative" in outside[0].line()
    assert [b.status for b in check_bands(_validation(64, [{"swap_rate": 0.01}]))] == ["n/a", "WARN", "n/a"]
