"""The hook patch inside real nanochat (needs NANOCHAT_DIR, the pin or master): off = upstream's numbers,
on = MC trains."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin import nanochat_patch

pytestmark = pytest.mark.integration
STEPS = Path(__file__).with_name("nanochat_gpt_steps.py")


def _run(tree: Path, mode: str, plugins: str | None, *flags: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(STEPS), mode, *flags], env=_env(tree, None, plugins), cwd=tree,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


@pytest.fixture
def patched(nanochat_dir: Path, tmp_path: Path) -> Path:
    pytest.importorskip("filelock", reason="upstream nanochat.common imports filelock")
    tree = tmp_path / "nanochat"
    shutil.copytree(nanochat_dir, tree)
    nanochat_patch.apply(tree)
    return tree


def _losses(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("loss ")]


def test_without_mc_the_patched_forward_gives_upstreams_losses(nanochat_dir: Path, patched: Path) -> None:
    pristine = _losses(_run(nanochat_dir, "off", None))
    assert len(pristine) == 3
    assert _losses(_run(patched, "off", "none")) == pristine  # no plugin allowed
    installed = _run(patched, "off", None)  # plugin installed and loaded, --mc absent
    assert "hooks True" in installed
    assert _losses(installed) == pristine


def test_compiled_forward_has_no_graph_breaks_and_one_graph_per_working_context_width(patched: Path) -> None:
    def counts(lines: list[str]) -> dict[str, int]:
        pairs = [line.split() for line in lines]
        return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[0] in ("graph_breaks", "graphs", "budgets")}

    off = counts(_run(patched, "off", None, "compile"))  # plugin installed, --mc absent: upstream's one graph
    assert off == {"graph_breaks": 0, "graphs": 1}
    mc = counts(_run(patched, "mc", "megacontext", "compile"))
    assert mc["graph_breaks"] == 0
    # the curriculum changes the width over 5 steps; dynamo makes it dynamic after the first change, so
    # only its few guarded width ranges (attention window branches) ever compile, never a step
    assert mc["budgets"] >= 4 and mc["graphs"] < mc["budgets"] and mc["graphs"] <= 3


def test_with_mc_the_patched_forward_trains_through_the_plugin(patched: Path) -> None:
    lines = _run(patched, "mc", "megacontext")
    losses = [float(line.split()[1]) for line in _losses(lines)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    telemetry = next(line for line in lines if line.startswith("telemetry "))
    for key in ("mc/token_loss", "mc/lens_loss", "mc/lod0_loss", "mc/time_controller_ms"):
        assert key in telemetry.split()


BASE_TRAIN = ["--device-type", "cpu", "--depth", "2", "--head-dim", "64", "--window-pattern", "L", "--max-seq-len",
              "256", "--device-batch-size", "2", "--total-batch-size", "512", "--num-iterations", "3",
              "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1"]
MC = ["--mc", "--block_size", "8", "--allocator_recent_tokens", "32", "--mc_horizon", "16", "--mc_auto_batch", "0"]


@pytest.fixture
def base_dir(patched: Path, tmp_path: Path) -> Path:
    """An offline NANOCHAT_BASE_DIR: our corpus as the pretraining shards and a tiny tokenizer."""
    for module in ("rustbpe", "tokenizers", "psutil", "pyarrow"):
        pytest.importorskip(module, reason=f"upstream's training scripts need {module}")
    base = tmp_path / "base"
    from megacontext_plugin.data.corpus import write_corpus

    write_corpus(base / "base_data", num_shards=3, docs_per_shard=48, seed=0)
    proc = subprocess.run([sys.executable, "-m", "scripts.tok_train", "--max-chars", "1000000", "--vocab-size", "512"],
                          cwd=patched, env=_env(patched, base, "none"), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base


PLUGIN_ROOT = Path(nanochat_patch.__file__).resolve().parents[1]
"""Where the megacontext_plugin under test lives: an upstream script imports the same one (a checkout
beside an editable install of another would otherwise be shadowed by it)."""


def _env(tree: Path, base: Path | None, plugins: str | None) -> dict[str, str]:
    """The environment of an upstream script: the tree and the plugin under test on PYTHONPATH, the
    allow-list, the base dir."""
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_PLUGINS"}
    env |= {"PYTHONPATH": os.pathsep.join([str(tree), str(PLUGIN_ROOT)]), "OMP_NUM_THREADS": "2"}
    if base is not None:
        env["NANOCHAT_BASE_DIR"] = str(base)
    if plugins is not None:
        env["NANOCHAT_PLUGINS"] = plugins
    return env


def _base_train(tree: Path, base: Path, plugins: str | None, extra: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *BASE_TRAIN, *extra], cwd=tree,
                          env=_env(tree, base, plugins), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("step ")]


def test_base_train_without_mc_is_unchanged_and_with_mc_trains(patched: Path, base_dir: Path) -> None:
    plain = _base_train(patched, base_dir, "none", [])
    assert len(plain) == 3
    assert _base_train(patched, base_dir, None, []) == plain  # plugin loaded, --mc absent: same losses
    with_mc = _base_train(patched, base_dir, None, MC)
    losses = [float(item.split()[1]) for item in with_mc]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and with_mc != plain
    assert (base_dir / "base_checkpoints" / "d2" / "model_000003.pt").is_file()


@pytest.mark.upstream("pin")
def test_base_train_under_auto_batch_trains_the_planned_steps_with_the_schedule_in_0_1(patched: Path,
                                                                                      base_dir: Path) -> None:
    out = _script(patched, base_dir, None, "scripts.base_train", *BASE_TRAIN, *MC[:-2])
    planned = int(out.split("auto-batch: 3 -> ")[1].split()[0])  # vanilla's tokens in fewer, larger steps
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{i:05d}/{planned:05d}" for i in range(planned)]
    assert all(0 <= float(line.split("lrm:")[1].split("|")[0]) <= 1 for line in steps)
    assert (base_dir / "base_checkpoints" / "d2" / f"model_{planned:06d}.pt").is_file()


def test_base_train_reports_a_bad_mc_flag_in_one_line(patched: Path, base_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", "--mc_tree", "cloud"], cwd=patched,
                          env=_env(patched, base_dir, None), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "--mc_tree" in proc.stderr and "Traceback" not in proc.stderr


def test_base_train_saves_and_resumes_the_megacontext_state(patched: Path, base_dir: Path) -> None:
    run = [*MC, "--num-iterations", "6"]
    straight = _base_train(patched, base_dir, None, [*run, "--save-every", "3", "--model-tag", "mc"])
    ckpt = base_dir / "base_checkpoints" / "mc"
    assert (ckpt / "megacontext_000003.pt").is_file() and (ckpt / "megacontext_000006.pt").is_file()
    resumed = _base_train(patched, base_dir, None, [*run, "--model-tag", "mc", "--resume-from-step", "3"])
    # the first step after the resume repeats the straight run's (upstream's own dataloader resume is
    # approximate on a tiny corpus, so later steps may differ for vanilla runs too)
    assert resumed[0] == straight[3]

    _base_train(patched, base_dir, "none", ["--num-iterations", "3", "--model-tag", "plain"])
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *BASE_TRAIN, *MC, "--model-tag", "plain",
                           "--resume-from-step", "3"], cwd=patched, env=_env(patched, base_dir, None),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2 and "megacontext_000003.pt is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def _script(tree: Path, base: Path, plugins: str | None, module: str, *args: str) -> str:
    env = _env(tree, base, plugins) | {"NANOCHAT_TASK_DIR": str(base / "tasks"), "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, f"{module}: " + proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout + proc.stderr


MID = ["--device-type", "cpu", "--dtype", "float32", "--max-seq-len", "256", "--device-batch-size", "2",
       "--total-batch-size", "512", "--num-iterations", "2", "--eval-every", "-1", "--eval-tokens", "1024"]
SFT = ["--device-type", "cpu", "--dtype", "float32", "--device-batch-size", "2", "--target-examples-per-step", "4",
       "--num-iterations", "3", "--eval-every", "2", "--eval-steps", "2", "--eval-metrics-every", "-1"]


@pytest.mark.upstream("pin")
def test_mid_sft_and_chat_carry_the_megacontext_state_from_stage_to_stage(patched: Path, base_dir: Path) -> None:
    from megacontext_plugin.data.conversations import write_task_dir

    write_task_dir(base_dir / "tasks", mid_train=60, mid_val=8, sft_train=40, sft_val=8)
    _base_train(patched, base_dir, None, MC)
    ckpt = {stage: base_dir / f"{stage}_checkpoints" / "d2" for stage in ("base", "mid", "chatsft")}
    assert (ckpt["base"] / "megacontext_000003.pt").is_file()

    out = _script(patched, base_dir, None, "scripts.mid_train", *MID, *MC)
    assert f"GistNet and LensNet loaded from {ckpt['base'] / 'megacontext_000003.pt'}" in out  # base -> mid
    (mid_model,) = ckpt["mid"].glob("model_*.pt")  # mid_train stops on its data loader's count
    mid_state = mid_model.with_name(mid_model.name.replace("model_", "megacontext_"))
    assert mid_state.is_file()

    out = _script(patched, base_dir, None, "scripts.chat_sft", *SFT, *MC)
    assert f"loaded from {mid_state}" in out  # mid -> SFT
    sft_states = sorted(ckpt["chatsft"].glob("megacontext_*.pt"))
    assert sft_states and all(math.isfinite(float(line.split("Training loss:")[1].split("|")[0]))
                              for line in out.splitlines() if "Training loss:" in line)

    out = _script(patched, base_dir, None, "scripts.chat_cli", "--device-type", "cpu", "--dtype", "float32", "-t", "0",
                  "-p", "What is my dog called?", *MC)
    assert f"loaded from {sft_states[-1]}" in out  # SFT -> chat

    # auto-batch lowers mid's device batch (2 -> 1): the stage still takes the requested steps, its schedule
    # within [0, 1] (upstream's loader counts micro-batches)
    at = MID.index("--num-iterations") + 1
    requested = [*MID[:at], "4", *MID[at + 1:]]
    out = _script(patched, base_dir, None, "scripts.mid_train", *requested, *MC[:-2])
    assert "auto-batch: --device-batch-size 2 -> 1" in out and "--num-iterations 4 -> 7" in out
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["00001", "00002", "00003"]  # upstream prints the step done
    assert all(0 <= float(line.split("lrm:")[1].split("|")[0]) <= 1 for line in steps)
    assert (ckpt["mid"] / "model_000003.pt").is_file()
    # SFT under auto-batch (it changes nothing there: chat_sft counts examples, not positions): the steps
    # upstream takes for the same flags (its last iteration evaluates and saves), the schedule in [0, 1]
    def sft_steps(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("Step ") and "Training loss" in line]

    steps = sft_steps(_script(patched, base_dir, None, "scripts.chat_sft", *SFT, *MC[:-2]))
    upstream = sft_steps(_script(patched, base_dir, "none", "scripts.chat_sft", *SFT))
    assert [line.split()[1] for line in steps] == [line.split()[1] for line in upstream] == ["00000/00003",
                                                                                              "00001/00003"]
    assert all(0 <= float(line.split("lrm:")[1].split("|")[0]) <= 1 for line in steps)

    # the same stages without --mc: upstream's scripts, reading the offline task files
    _script(patched, base_dir, "none", "scripts.mid_train", *MID, "--model-tag", "d2")


def test_base_train_with_mc_logs_to_wandb_offline(patched: Path, base_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="upstream's W&B logging needs wandb")
    env = _env(patched, base_dir, None) | {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", *BASE_TRAIN, *MC, "--run", "mc-offline",
                           "--model-tag", "wandb"], cwd=patched, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history = b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
    assert b"mc/token_loss" in history and b"train/loss" in history  # our metrics ride in nanochat's log


MASTER_SFT = ["--device-type", "cpu", "--device-batch-size", "2", "--max-seq-len", "256", "--total-batch-size", "512",
              "--num-iterations", "3", "--eval-every", "2", "--eval-tokens", "1024", "--chatcore-every", "-1",
              "--mmlu-epochs", "0", "--gsm8k-epochs", "0"]


@pytest.mark.upstream("master")
def test_master_sft_eval_and_chat_carry_the_megacontext_state(patched: Path, base_dir: Path) -> None:
    """Master's stages (no mid_train): base -> SFT -> chat, and base_eval's post-run validation, offline
    through master's own dataset cache (``data.hub_cache``, what ``megacontext tasks --upstream master`` writes)."""
    from megacontext_plugin.data.hub_cache import write_hub_cache

    write_hub_cache(base_dir, counts={"mid_train": 1, "mid_val": 1, "sft_train": 40, "sft_val": 8})
    _base_train(patched, base_dir, None, MC)
    base_state = base_dir / "base_checkpoints" / "d2" / "megacontext_000003.pt"
    assert base_state.is_file()

    out = _script(patched, base_dir, None, "scripts.chat_sft", *MASTER_SFT, *MC)
    assert f"GistNet and LensNet loaded from {base_state}" in out  # base -> SFT
    sft_states = sorted((base_dir / "chatsft_checkpoints" / "d2").glob("megacontext_*.pt"))
    losses = [float(line.split("loss:")[1].split("|")[0]) for line in out.splitlines() if line.startswith("step ")]
    assert sft_states and losses and all(math.isfinite(v) for v in losses)

    out = _script(patched, base_dir, None, "scripts.chat_cli", "--device-type", "cpu", "-t", "0",
                  "-p", "What is my dog called?", *MC)
    assert f"loaded from {sft_states[-1]}" in out and "over MegaContext" in out  # SFT -> chat, decoded by MC

    out = _script(patched, base_dir, None, "scripts.base_eval", "--device-type", "cpu", "--eval", "bpb",
                  "--device-batch-size", "2", "--split-tokens", "1024", *MC)
    assert "val bpb:" in out and "MegaContext validation" in out  # master's own results, then ours
    # master writes no report: the plugin's own, beside the checkpoints, and the script says where
    report = base_dir / "report"
    assert f"megacontext: report {report / 'report.md'}" in out
    section = (report / "base-model-evaluation.md").read_text()
    assert section.startswith("## Base model evaluation") and "### MegaContext" in section
    assert "validation-base.png" in section and (report / "megacontext" / "validation-base.png").is_file()
    assert "## Base model evaluation" in (report / "report.md").read_text()

    _script(patched, base_dir, "none", "scripts.chat_sft", *MASTER_SFT)  # without --mc: upstream's script, offline
