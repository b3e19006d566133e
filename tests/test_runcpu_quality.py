"""integration/runcpu_quality.sh at a handful of steps: every stage of nanochat's pipeline runs through the
plain phase and the resumed MegaContext phase, the corpus keeps its standard-library split, a run lost mid-stage
continues where it stopped, and the run ends evaluable. Its numbers are the benchmark's business
(benchmarks/long_context.py), not this test's. How a re-run decides to continue or start over, stage by stage,
is tested without training in test_recipes.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_nanochat_hooks import patched  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "integration" / "runcpu_quality.sh"
TINY = {"MC_Q_PLAIN_STEPS": "4", "MC_Q_LONG_PLAIN_STEPS": "2", "MC_Q_STEPS": "3", "MC_Q_WARMUP_DOCS": "600",
        "MC_Q_LONG_DOCS": "80", "MC_Q_MID_STEPS": "2", "MC_Q_SFT_STEPS": "2", "MC_Q_CHAT_STEPS": "4",
        "MC_Q_SEQ_PLAIN": "256", "MC_Q_SEQ": "512",
        "MC_Q_BATCH_TOKENS": "2048", "MC_Q_PLAIN_BATCH_TOKENS": "1024", "MC_Q_VOCAB": "512", "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")


def test_knobs_without_mc_are_refused_before_any_work(tmp_path: Path) -> None:
    env = os.environ | {"MC_RUNCPU_DIR": str(tmp_path / "run")}
    proc = subprocess.run(["bash", str(SCRIPT), "--block_size", "8"], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 2 and proc.stderr == "runcpu_quality: error: MegaContext knobs need --mc (got: " \
                                                   "--block_size 8)\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
@pytest.mark.slow(minutes=4)
@pytest.mark.upstream("pin")  # the recipe runs the pin's scripts (mid_train); master has none
def test_the_recipe_runs_every_stage_continues_a_lost_run_and_ends_evaluable(patched: Path,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    for module in ("rustbpe", "tokenizers", "psutil", "pyarrow", "filelock"):
        pytest.importorskip(module, reason=f"upstream's scripts need {module}")
    run = tmp_path / "run"
    env = os.environ | TINY | {"MC_NANOCHAT": str(patched), "MC_RUNCPU_DIR": str(run), "MC_SAVE_EVERY": "2"}
    lost = subprocess.Popen(["bash", str(SCRIPT), "--mc"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert lost.stdout is not None
    seen = []
    for line in lost.stdout:  # the second phase's step 6 (of 9): its save of step 6 is on disk, step 8's is not
        seen.append(line)
        if line.startswith("step 00006/00009"):
            os.killpg(lost.pid, signal.SIGKILL)  # the machine is lost mid-stage
            break
    lost.wait(timeout=60)
    before = "".join(seen)
    assert lost.returncode != 0 and "step 00006/00009" in before, before[-4000:]
    assert "resuming at step 4, within --mc_plain_steps 6: GistNet and LensNet start fresh" in before

    proc = subprocess.run(["bash", str(SCRIPT), "--mc"], capture_output=True, text=True, timeout=1200, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"runcpu_quality: continuing the unfinished run in {run} (--fresh starts over)" in proc.stdout
    assert all(proc.stdout.count(f"runcpu_quality: skip {stage}: done by an earlier run") == 1
               for stage in ("data (short documents)", "report reset", "tokenizer", "data (documents of 512 tokens)",
                             "tasks", "base (plain, window 256)"))
    base = run / "base_checkpoints" / "d2"
    assert (f"runcpu_quality: base (MegaContext, window 512): resuming from step 6, the latest checkpoint in "
            f"{base}") in proc.stdout
    second = proc.stdout.split("runcpu_quality: == base (MegaContext, window 512)\n")[1].split("== mid\n")[0]
    steps = [line.split("/")[0] for line in second.splitlines() if line.startswith("step ")]
    assert steps == ["step 00006", "step 00007", "step 00008"]  # continued, not restarted
    assert "start fresh" not in second  # the aux nets continue from megacontext_000006.pt
    stages = [line.rsplit(" ", 1)[0] for line in (run / "stage_seconds.txt").read_text().splitlines()]
    assert stages == ["data (short documents)", "report reset", "tokenizer", "data (documents of 512 tokens)", "tasks",
                      "base (plain, window 256)", "base (MegaContext, window 512)", "mid", "sft", "base eval",
                      "sft eval", "report"]  # each completed once, across the two runs
    log = (run / "report" / "log.txt").read_text()  # the operating guide's tail -f: every stage, across report reset
    assert all(f"runcpu_quality: == {stage}\n" in log for stage in stages)
    assert log.count("Reset report and wrote header") == 1  # the continued run kept the report
    # the plain phase's last step (the second phase and MC_Q_FROM_PLAIN start from it) and the run's: the other
    # saves (steps 2, 6 and 8) are pruned once their phase is done
    assert sorted(p.name for p in base.glob("model_*")) == ["model_000004.pt", "model_000009.pt"]
    assert not (base / "megacontext_000004.pt").exists()  # the plain phase trains without the plugin
    assert (base / "megacontext_000009.pt").is_file()  # 2 plain steps at the long window, then 3 MegaContext steps
    meta = json.loads((base / "meta_000009.json").read_text())
    assert meta["model_config"]["sequence_len"] == 512
    listed = (run / "corpus_train_files.txt").read_text().splitlines()
    assert listed and all(name.endswith(".py") for name in listed)
    report = (run / "report" / "report.md").read_text()
    assert report.count("### MegaContext") == 2  # the base checkpoint's validation and the SFT checkpoint's
    assert "## Chat evaluation sft" in report and (run / "report" / "megacontext" / "validation-sft.json").is_file()
    assert "megacontext: band " in proc.stdout.split("== sft eval")[1]
    assert (run / "chatsft_checkpoints" / "d2").is_dir()
    # the evaluation the recipe names at its end runs on what it trained
    evaluate = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "long-context", "--checkpoint",
                               str(base), "--lengths", "2", "--depths", "0.5", "--samples", "1", "--recall-docs", "1",
                               "--lens-docs", "0"], capture_output=True, text=True, timeout=600,
                              env=env | {"PYTHONPATH": str(patched), "NANOCHAT_DIR": str(patched)})
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert all(f"\n{arm}" in evaluate.stdout or f" {arm} " in evaluate.stdout for arm in ("truncation", "mc"))

    # the baseline from the same plain phase: no --mc, the second phase trains plainly
    baseline = tmp_path / "baseline"
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200, cwd=ROOT,
                          env=env | {"MC_RUNCPU_DIR": str(baseline), "MC_Q_FROM_PLAIN": str(run)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = [line.rsplit(" ", 1)[0] for line in (baseline / "stage_seconds.txt").read_text().splitlines()]
    assert stages[:3] == [f"plain phase from {run}", "report reset", "base (plain, window 512)"]
    copied = baseline / "base_checkpoints" / "d2"
    assert (copied / "model_000004.pt").read_bytes() == (base / "model_000004.pt").read_bytes()
    assert (copied / "model_000009.pt").is_file() and not list(copied.glob("megacontext_*"))
    assert (baseline / "corpus_train_files.txt").read_text() == (run / "corpus_train_files.txt").read_text()
    assert "long_docs=80" in (baseline / "recipe_sizes.txt").read_text().splitlines()

    # other arguments in the run's directory: it starts over (stopped once the first stage starts)
    other = subprocess.Popen(["bash", str(SCRIPT), "--mc", "--mc_horizon", "32"], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert other.stdout is not None
    seen = []
    for line in other.stdout:
        seen.append(line)
        if line == "runcpu_quality: == data (short documents)\n":
            os.killpg(other.pid, signal.SIGKILL)
            break
    other.wait(timeout=60)
    assert f"runcpu_quality: starting over in {run}: it held a run of 'runcpu_quality.sh --mc'\n" in seen, seen
    assert not (run / "base_checkpoints").exists()


@pytest.mark.integration
@pytest.mark.slow(minutes=3)
@pytest.mark.upstream("master")
def test_on_master_the_recipe_trains_base_and_sft_and_writes_the_plugins_report(patched: Path,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    for module in ("rustbpe", "tokenizers", "psutil", "pyarrow", "filelock"):
        pytest.importorskip(module, reason=f"upstream's scripts need {module}")
    run = tmp_path / "run"
    env = os.environ | TINY | {"MC_NANOCHAT": str(patched), "MC_RUNCPU_DIR": str(run)}
    proc = subprocess.run(["bash", str(SCRIPT), "--mc"], capture_output=True, text=True, timeout=1200, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = [line.rsplit(" ", 1)[0] for line in (run / "stage_seconds.txt").read_text().splitlines()]
    assert stages == ["data (short documents)", "tokenizer", "data (documents of 512 tokens)", "tasks",
                      "base (plain, window 256)", "base (MegaContext, window 512)", "sft", "base eval", "sft eval"]
    sft = proc.stdout.split("runcpu_quality: == sft\n")[1].split("runcpu_quality: sft:")[0]
    assert "Training mixture: " in sft and "GistNet and LensNet loaded from" in sft  # our conversations, base -> SFT
    # MC_Q_CHAT_STEPS = 4 steps in one stage (master saves it under its last step's index, 3)
    sft_saves = sorted(p.name for p in (run / "chatsft_checkpoints" / "d2").glob("*_000003*"))
    assert sft_saves == ["megacontext_000003.pt", "meta_000003.json", "model_000003.pt", "optim_000003_rank0.pt"]
    report = (run / "report" / "report.md").read_text()  # master writes none: the plugin's own
    assert report.startswith("# MegaContext report") and report.count("### MegaContext") == 2
    assert "## Base model evaluation" in report and "## Chat evaluation sft" in report
    assert (run / "report" / "megacontext" / "validation-base.png").is_file()
    assert f"report (the plugin's own: master writes none): {run}/report/report.md" in proc.stdout
    evaluate = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "long-context", "--checkpoint",
                               str(run / "base_checkpoints" / "d2"), "--lengths", "2", "--depths", "0.5",
                               "--samples", "1", "--recall-docs", "1", "--lens-docs", "0"], capture_output=True,
                              text=True, timeout=600, env=env | {"PYTHONPATH": str(patched),
                                                                 "NANOCHAT_DIR": str(patched)})
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert all(f"\n{arm}" in evaluate.stdout or f" {arm} " in evaluate.stdout for arm in ("truncation", "mc"))


def test_from_plain_refuses_more_steps_than_its_long_documents_hold(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "base_checkpoints" / "d2").mkdir(parents=True)
    (source / "base_checkpoints" / "d2" / "model_000004.pt").write_bytes(b"")
    (source / "recipe_sizes.txt").write_text("seq=512\nsteps=3\nlong_docs=12\n")
    env = os.environ | TINY | {"MC_RUNCPU_DIR": str(tmp_path / "run"), "MC_Q_FROM_PLAIN": str(source),
                               "MC_Q_STEPS": "3"}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2  # 12 documents of 512 tokens, two thirds of them: 2 steps of 2,048 tokens
    assert proc.stderr.strip().splitlines()[-1] == (f"runcpu_quality: error: MC_Q_LONG_PLAIN_STEPS + MC_Q_STEPS = 5: "
                                                    f"the long documents of {source} hold about 2 steps")
    assert not (tmp_path / "run").exists()


def test_from_plain_must_hold_the_plain_phase(tmp_path: Path) -> None:
    env = os.environ | TINY | {"MC_RUNCPU_DIR": str(tmp_path / "run"), "MC_Q_FROM_PLAIN": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"runcpu_quality: error: MC_Q_FROM_PLAIN={tmp_path} holds no "
                                                    f"plain phase of 4 steps at depth 2")
    assert not (tmp_path / "run").exists()
