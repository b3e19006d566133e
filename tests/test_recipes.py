"""The shell recipes in integration/: argument handling, the plan they run, and .mc_env hygiene.

Each check runs the real script; nothing here trains (the pipeline itself is exercised by the
integration tests and by ``integration/runcpu.sh``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN10 = ROOT / "integration" / "run10.sh"
RUNCPU = ROOT / "integration" / "runcpu.sh"
MC_SETUP = ROOT / "integration" / "mc_setup"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")


def _bash(script: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, check=False,
                          env=env, cwd=cwd)


def _commands(stdout: str, script: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("+ ") and f"-m scripts.{script}" in line]


def test_run10_h100_doubles_the_batch_and_halves_the_iterations_for_the_same_tokens() -> None:
    plans = {}
    for gpu in ("5090", "h100"):
        proc = _bash(RUN10, "--gpu", gpu, "--dry-run")
        assert proc.returncode == 0, proc.stderr
        (base,) = _commands(proc.stdout, "base_train")
        flags = dict(part.lstrip("-").split("=", 1) for part in base.split() if part.startswith("--") and "=" in part)
        plans[gpu] = {k: int(flags[k]) for k in ("depth", "device-batch-size", "total-batch-size", "num-iterations")}
        assert "--mc" not in proc.stdout  # without --mc the run is upstream's
    a, b = plans["5090"], plans["h100"]
    assert a["depth"] == b["depth"] == 12
    assert b["device-batch-size"] == 2 * a["device-batch-size"]
    assert b["num-iterations"] * 2 == a["num-iterations"]
    assert a["total-batch-size"] * a["num-iterations"] == b["total-batch-size"] * b["num-iterations"]  # same tokens
    assert 3.0e9 <= a["total-batch-size"] * a["num-iterations"] <= 3.2e9  # the seed's ~3.1B tokens


def test_run10_forwards_the_megacontext_knobs_to_every_training_and_eval_stage() -> None:
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", "--mc", "--block_size", "32")
    assert proc.returncode == 0, proc.stderr
    for script in ("base_train", "mid_train", "chat_sft", "chat_eval"):
        lines = _commands(proc.stdout, script)
        assert lines and all(line.endswith("--mc --block_size 32") for line in lines), script
    for stage in ("tok_train", "tok_eval", "base_loss", "base_eval", "nanochat.report generate"):
        assert stage in proc.stdout  # every stage of the seed's recipe is there


@pytest.mark.parametrize(("args", "needle"), [
    (["--dry-run"], "which GPU?"),
    (["--gpu", "a100", "--dry-run"], "unknown --gpu 'a100'"),
    (["--gpu", "5090", "--dry-run", "--block_size", "32"], "MegaContext knobs need --mc"),
])
def test_run10_bad_arguments_are_one_line(args: list[str], needle: str) -> None:
    proc = _bash(RUN10, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and proc.stdout == ""


def test_runcpu_refuses_knobs_without_mc_before_any_work(tmp_path: Path) -> None:
    env = os.environ | {"MC_RUNCPU_DIR": str(tmp_path / "run")}
    proc = _bash(RUNCPU, "--block_size", "8", env=env)
    assert proc.returncode == 2 and "MegaContext knobs need --mc" in proc.stderr
    assert not (tmp_path / "run").exists()


def _mc_setup_checkout(tmp_path: Path) -> Path:
    """A minimal checkout holding what ``mc_setup --env-only`` reads: the script and the manifest."""
    work = tmp_path / "repo"
    (work / "integration").mkdir(parents=True)
    (work / "megacontext_plugin" / "patches").mkdir(parents=True)
    shutil.copy(MC_SETUP, work / "integration" / "mc_setup")
    shutil.copy(ROOT / "megacontext_plugin" / "patches" / "manifest.json", work / "megacontext_plugin" / "patches")
    return work


def test_mc_setup_writes_mc_env_from_the_environment_private_and_ignored(tmp_path: Path) -> None:
    work = _mc_setup_checkout(tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WANDB_API_KEY": "k3y with 'quotes' $and spaces",
           "MC_OTEL_ENDPOINT": "http://collector:4318", "UNRELATED_SECRET": "must-not-appear"}
    proc = _bash(work / "integration" / "mc_setup", "--env-only", env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    mc_env = work / ".mc_env"
    assert stat.S_IMODE(mc_env.stat().st_mode) == 0o600
    text = mc_env.read_text()
    assert "must-not-appear" not in text and "k3y" not in proc.stdout  # only the documented variables, never echoed
    show = "printf '%s\\n%s' \"$WANDB_API_KEY\" \"$MC_OTEL_ENDPOINT\""
    loaded = subprocess.run(["bash", "-c", f"set -a; . {mc_env}; {show}"], capture_output=True, text=True, check=True,
                            env={"PATH": os.environ["PATH"]})
    assert loaded.stdout == "k3y with 'quotes' $and spaces\nhttp://collector:4318"  # values survive quoting
    if (ROOT / ".git").exists():  # this repository never commits .mc_env or the run outputs
        ignored = subprocess.run(["git", "check-ignore", ".mc_env", ".mc/runcpu"], cwd=ROOT, capture_output=True,
                                 text=True, check=False)
        assert ignored.stdout.split() == [".mc_env", ".mc/runcpu"]


def test_mc_setup_writes_mc_env_on_a_machine_with_none_of_those_variables(tmp_path: Path) -> None:
    """A fresh machine sets no WANDB_/HF_/OTEL_ variable: that must not stop the set-up."""
    work = _mc_setup_checkout(tmp_path)
    proc = _bash(work / "integration" / "mc_setup", "--env-only", env={"PATH": os.environ["PATH"],
                                                                       "HOME": str(tmp_path)}, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / ".mc_env").read_text().count("export ") == 1  # MC_NANOCHAT only


def test_mc_setup_rejects_an_unknown_argument(tmp_path: Path) -> None:
    proc = _bash(MC_SETUP, "--tpu")
    assert proc.returncode == 2 and "unknown argument '--tpu'" in proc.stderr


def test_run10_names_the_plugin_it_runs_and_megacontext_plugin_wins() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MEGACONTEXT_PLUGIN"}
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", "--mc", env=env)
    assert proc.returncode == 0, proc.stderr
    if (ROOT / ".venv" / "bin" / "megacontext").exists():  # the venv mc_setup makes: its plugin is named
        assert "run10: plugin: megacontext-plugin " in proc.stdout
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", "--mc", env=env | {"MEGACONTEXT_PLUGIN": "/wheels/mc.whl"})
    assert proc.returncode == 0, proc.stderr
    assert "run10: would install the plugin from MEGACONTEXT_PLUGIN=/wheels/mc.whl into .venv" in proc.stdout


def test_release_refuses_an_unknown_argument_in_one_line() -> None:
    proc = _bash(ROOT / "integration" / "release.sh", "--publish")
    assert proc.returncode == 2 and proc.stderr == "release: error: unknown argument '--publish' (expected --upload)\n"
