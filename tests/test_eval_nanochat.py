"""`megacontext eval long-context --checkpoint DIR` on a nanochat run's checkpoint directory (needs
NANOCHAT_DIR): an --mc run through every arm, a vanilla run through truncation and full, and the
one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_nanochat_hooks import MC, MID, SFT, _base_train, _script, base_dir, patched  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
SMALL_EVAL = ["--lengths", "2", "--depths", "0.5", "--samples", "1", "--recall-docs", "1", "--lens-docs", "0"]


def _eval(nanochat: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it outside the tree: nanochat found through NANOCHAT_DIR alone, the
    tokenizer found beside the checkpoints (no NANOCHAT_BASE_DIR)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NANOCHAT_BASE_DIR", "NANOCHAT_PLUGINS")}
    env |= {"NANOCHAT_DIR": str(nanochat), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "long-context", *args],
                          env=env, capture_output=True, text=True, timeout=900, check=False)


def test_eval_long_context_runs_the_arms_on_an_mc_run_and_a_vanilla_run(
        patched: Path, base_dir: Path, nanochat_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    _base_train(patched, base_dir, None, [*MC, "--model-tag", "mc"])
    _base_train(patched, base_dir, "none", ["--model-tag", "plain"])
    runs = base_dir / "base_checkpoints"

    proc = _eval(patched, "--checkpoint", str(runs / "mc"), *SMALL_EVAL, "--json", str(tmp_path / "mc.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "GistNet and LensNet from" in proc.stdout and "megacontext_000003.pt" in proc.stdout
    mc = json.loads((tmp_path / "mc.json").read_text())
    assert {r["arm"] for r in mc["rows"]} == {"truncation", "uniform", "mc", "full"}
    assert mc["settings"]["tokens"] == "nanochat tokenizer (vocab 512)" and mc["settings"]["sequence_len"] == 256
    assert mc["recipe"]["nanochat_step"] == 3 and all(r["nll_h"] is not None for r in mc["rows"])
    budget, horizon = mc["settings"]["budget"], mc["settings"]["horizon"]
    assert horizon == 16 and budget < 256  # the checkpoint's own: its --mc_horizon and final curriculum budget

    same = ["--budget", str(budget), "--horizon", str(horizon)]  # compare at the MC run's budget
    proc = _eval(patched, "--checkpoint", str(runs / "plain"), *SMALL_EVAL, *same, "--json", str(tmp_path / "v.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "trained without --mc, so the arms are truncation,full" in proc.stdout
    vanilla = json.loads((tmp_path / "v.json").read_text())
    assert [r["arm"] for r in vanilla["rows"]] == ["truncation", "full"]
    assert vanilla["settings"]["budget"] == budget and vanilla["recipe"]["megacontext_state"] is None
    assert all(r["nll_h"] is not None for r in vanilla["rows"])

    proc = _eval(patched, "--checkpoint", str(runs / "plain"), *SMALL_EVAL, "--arms", "truncation,mc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--arms mc: " in proc.stderr.splitlines()[-1] and "trained without --mc" in proc.stderr.splitlines()[-1]

    proc = _eval(nanochat_dir, "--checkpoint", str(runs / "mc"), *SMALL_EVAL)  # the pristine tree
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not patched" in proc.stderr.splitlines()[-1]


@pytest.mark.upstream("pin")  # trains through mid_train, which master does not have
def test_eval_long_context_chat_answers_through_the_engine_on_an_sft_run(
        patched: Path, base_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from megacontext_plugin.data.conversations import write_task_dir

    write_task_dir(base_dir / "tasks", mid_train=60, mid_val=8, sft_train=40, sft_val=8)
    _base_train(patched, base_dir, None, MC)
    _script(patched, base_dir, None, "scripts.mid_train", *MID, *MC)
    _script(patched, base_dir, None, "scripts.chat_sft", *SFT, *MC)
    sft = base_dir / "chatsft_checkpoints" / "d2"
    # W = 67 here: the session's default refocus interval (W/8 = 8, D54) leaves older history room at 2x and 4x
    chat = ["--chat", "--lengths", "2,4", "--chat-docs", "3", "--seed", "5"]

    proc = _eval(patched, "--checkpoint", str(sft), *chat, "--json", str(tmp_path / "mc.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "GistNet and LensNet loaded from" in proc.stdout and "chat_acc" in proc.stdout
    mc = json.loads((tmp_path / "mc.json").read_text())
    budget = mc["settings"]["budget"]
    assert [(r["arm"], r["length_x"]) for r in mc["rows"]] == [
        (arm, x) for x in (2, 4) for arm in ("truncation", "mc", "full")]
    for row in mc["rows"]:
        target = row["length_x"] * budget
        assert row["chat_docs"] == 3 and target - 12 < row["chat_tokens"] <= target + 40
        if (row["arm"], row["length_x"]) == ("full", 4):  # 4 x 67 tokens and the answer: more than the window of 256
            assert row["chat_acc"] is None and "does not fit sequence_len 256" in row["note"]
        else:
            assert 0 <= row["chat_correct"] <= 3 and row["chat_acc"] == row["chat_correct"] / 3
    assert [r["mc_decoded"] for r in mc["rows"] if r["arm"] == "mc"] == [3, 3]  # prompt + answer > W: MegaContext
    assert len(mc["answers"]) == 6 and all(set(a["answers"]) >= {"truncation", "mc"} for a in mc["answers"])
    for x in (2, 4):  # where the session held the fact, and the answers right where it did
        row = next(r for r in mc["rows"] if (r["arm"], r["length_x"]) == ("mc", x))
        raw = [a["fact_raw"] for a in mc["answers"] if a["length_x"] == x]
        assert len(raw) == 3 and row["fact_raw"] == sum(raw) / 3
        assert row["fact_raw_acc"] is None if not any(raw) else 0 <= row["fact_raw_acc"] <= 1

    proc = _eval(patched, "--checkpoint", str(sft), *chat, "--json", str(tmp_path / "again.json"))
    again = json.loads((tmp_path / "again.json").read_text())
    assert (again["rows"], again["answers"]) == (mc["rows"], mc["answers"])  # seeded and greedy

    vanilla = base_dir / "chatsft_checkpoints" / "plain"  # the same model without its MegaContext state
    shutil.copytree(sft, vanilla, ignore=shutil.ignore_patterns("megacontext_*"))
    proc = _eval(patched, "--checkpoint", str(vanilla), *chat, "--json", str(tmp_path / "v.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "trained without --mc, so the chat arms are truncation,full" in proc.stdout
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["truncation", "full"] * 2 and rows[0]["chat_correct"] is not None

    proc = _eval(patched, "--checkpoint", str(vanilla), *chat, "--arms", "mc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--arms mc: " in proc.stderr.splitlines()[-1] and "trained without --mc" in proc.stderr.splitlines()[-1]
