"""The shell recipes in integration/: argument handling, the plan they run, and .mc_env hygiene.

Each check runs the real script; nothing here trains (the pipeline itself is exercised by the
integration tests and by ``integration/runcpu.sh``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
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
    for script in ("base_train", "base_eval", "mid_train", "chat_sft", "chat_eval"):  # evals: the post-run validation
        lines = _commands(proc.stdout, script)
        assert lines and all(line.endswith("--mc --block_size 32") for line in lines), script
    for stage in ("tok_train", "tok_eval", "base_loss", "nanochat.report generate"):
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


# --- issue 29: nanochat's source checked before any install; logs where the operating guide looks ---

PIN_ARCHIVE = ROOT.parent / "shared" / "upstream" / "nanochat-a91743c.tar.gz"


def _no_venv_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh machine's environment: MC_PYTHON would make the venv, so a run that reached step 1 shows it."""
    (tmp_path / "tmpdir").mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmpdir"), **extra}


def _archive(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    import tarfile

    src = tmp_path / f"{name}-src"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    out = tmp_path / f"{name}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for rel in files:
            tar.add(src / rel, arcname=rel)
    return out


@pytest.mark.parametrize("case", ["missing", "not_a_tree", "not_an_archive", "corrupt", "no_nanochat_inside",
                                  "unreachable"])
def test_mc_setup_finds_no_nanochat_in_one_line_before_making_the_venv(tmp_path: Path, case: str) -> None:
    work = _mc_setup_checkout(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.tar.gz").write_bytes(b"not gzip at all")
    (tmp_path / "notes.txt").write_text("hello")
    source = {
        "missing": {"NANOCHAT_DIR": str(tmp_path / "nope")},
        "not_a_tree": {"NANOCHAT_DIR": str(tmp_path / "empty")},
        "not_an_archive": {"NANOCHAT_DIR": str(tmp_path / "notes.txt")},
        "corrupt": {"NANOCHAT_DIR": str(tmp_path / "corrupt.tar.gz")},
        "no_nanochat_inside": {"NANOCHAT_DIR": str(_archive(tmp_path, "other", {"other/README.md": "hi"}))},
        # a clone URL that cannot answer (a local path that does not exist: no network needed)
        "unreachable": {"MC_NANOCHAT_URL": str(tmp_path / "no-such-repo")},
    }[case]
    env = _no_venv_env(tmp_path, MC_PYTHON="python3", **source)
    proc = _bash(work / "integration" / "mc_setup", "--cpu", env=env, cwd=work)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mc_setup: error: ")
    assert "set NANOCHAT_DIR to a nanochat checkout or archive (.tar.gz) at a91743c (pin)" in proc.stderr
    assert proc.stdout == ""  # nothing installed, not even said
    assert not (work / ".venv").exists() and not (work / ".mc").exists()
    assert list((tmp_path / "tmpdir").iterdir()) == []  # an archive's extract is removed


def _stub_venv(work: Path, log: Path) -> None:
    """.venv with a python that installs nothing (pip is logged) and the real plugin's console script."""
    real, bin_dir = sys.executable, work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        f'#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then echo "pip $*" >>"{log}"; exit 0; fi\n'
        f'if [ "$1" = -c ]; then echo "mc_setup: torch (stub)"; exit 0; fi\nexec "{real}" "$@"\n')
    (bin_dir / "megacontext").write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{real}" -m megacontext_plugin.cli "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)


def test_mc_setup_takes_the_archive_users_hold_as_nanochat_dir(tmp_path: Path) -> None:
    """NANOCHAT_DIR = the pin's `git archive --prefix=nanochat/` .tar.gz: extracted outside the repository,
    checked before the installs, copied to .mc/nanochat and patched; the extract is gone at exit."""
    if PIN_ARCHIVE.is_file():
        archive = PIN_ARCHIVE
    elif os.environ.get("NANOCHAT_DIR") and (Path(os.environ["NANOCHAT_DIR"]) / "nanochat" / "gpt.py").is_file():
        import tarfile

        archive = tmp_path / "nanochat.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(os.environ["NANOCHAT_DIR"], arcname="nanochat")
    else:
        pytest.skip(f"no pin archive at {PIN_ARCHIVE} and no NANOCHAT_DIR")
    work = _mc_setup_checkout(tmp_path)
    pip_log = tmp_path / "pip.log"
    _stub_venv(work, pip_log)
    env = _no_venv_env(tmp_path, NANOCHAT_DIR=str(archive), MC_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(work / "integration" / "mc_setup"), "--cpu"], capture_output=True, text=True,
                          timeout=300, check=False, env=env, cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "nanochat from the archive" in line)
    assert first < next(i for i, line in enumerate(lines) if "installing torch" in line)  # checked before installs
    assert str(tmp_path / "tmpdir") in lines[first] and str(work) not in lines[first]  # extracted outside the repo
    assert len(pip_log.read_text().splitlines()) == 2  # torch, then the plugin: only after the check
    assert "patched nanochat ready at" in proc.stdout
    verify = subprocess.run([str(work / ".venv" / "bin" / "megacontext"), "nanochat", "verify",
                             str(work / ".mc" / "nanochat")], capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0 and verify.stdout.splitlines()[-1].endswith("the pin): patched"), verify.stdout
    assert list((tmp_path / "tmpdir").iterdir()) == []  # the extract is removed at exit
    assert f"export NANOCHAT_DIR={archive}" in (work / ".mc_env").read_text()  # a re-run finds the same archive


def _lib(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """lib.sh sourced as a recipe sources it, then BODY (RUN_DIR and NC are tmp_path's run/ and nc/)."""
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "nc").mkdir(exist_ok=True)
    script = (f'set -euo pipefail; ROOT={ROOT}; TOOL=t; . "$ROOT/integration/lib.sh"; '
              f'RUN_DIR={tmp_path / "run"}; NC={tmp_path / "nc"}; {body}')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)


def test_stages_and_say_lines_land_in_report_log_txt(tmp_path: Path) -> None:
    proc = _lib(tmp_path, 'say "before the log"; mc_log_start "$RUN_DIR"; say hello; stage one echo from-one; '
                          'stage two sh -c "echo from-two; exit 3"; say never')
    assert proc.returncode == 2 and "t: error: two failed; the full log is" in proc.stderr
    log = (tmp_path / "run" / "report" / "log.txt").read_text().splitlines()
    assert log[0].startswith("== t started ") and "before the log" not in "\n".join(log)
    assert log[1:4] == ["t: hello", "t: == one", "from-one"] and log[4] in ("t: one: 0 s", "t: one: 1 s")  # a tick
    assert log[5:7] == ["t: == two", "from-two"] and log[7].startswith("t: error: two failed")
    assert "from-one" in (tmp_path / "run" / "t.log").read_text()  # the stage log as before
    assert "t: hello" in proc.stdout and "from-two" in proc.stdout  # and the terminal


def test_python_stages_log_line_by_line(tmp_path: Path) -> None:
    """PYTHONUNBUFFERED: `tail -f report/log.txt` shows a line when it is printed, not when a buffer fills.
    The script prints 1 and waits for a flag before printing 2; the log must show the 1 before the flag."""
    flag = tmp_path / "flag"
    (tmp_path / "p.py").write_text(f"import os, time\nprint(1)\nwhile not os.path.exists({str(flag)!r}):\n"
                                   f"    time.sleep(0.05)\nprint(2)\n")
    proc = _lib(tmp_path, f'mc_log_start "$RUN_DIR"; stage py {sys.executable} {tmp_path / "p.py"} & '
                          f'for i in $(seq 600); do grep -qx 1 "$RUN_DIR/report/log.txt" && break; sleep 0.1; done; '
                          f'cp "$RUN_DIR/report/log.txt" "$RUN_DIR/early.txt"; touch {flag}; wait')
    assert proc.returncode == 0, proc.stderr
    early = (tmp_path / "run" / "early.txt").read_text().splitlines()
    assert "1" in early and "2" not in early


def _fake_repo_for_run10(tmp_path: Path, short: int = 0, recipe: str = "run10.sh") -> tuple[Path, dict[str, str]]:
    """A checkout whose .venv python runs nothing (it prints what it would run; `nanochat.dataset -n N`
    makes N empty shards, `short` fewer), with a patched tree stand-in and curl stubbed: run10.sh (or
    RECIPE) end to end. The training stubs leave what upstream's scripts leave: tok_train the tokenizer,
    base_train a checkpoint every --save-every steps and at its last (from --resume-from-step on; with --mc
    megacontext_ too; it fails after step STUB_CRASH_AT, as a lost machine would), mid_train and chat_sft one
    at their end. ``megacontext corpus`` writes --shards empty shards (with --doc-tokens and STUB_LONG_CRASH
    set it fails after writing them), ``tasks`` its directory; ``eval validate`` runs nothing."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / "integration").mkdir(parents=True)
    (repo / ".mc" / "nanochat").mkdir(parents=True)
    for name in (recipe, "lib.sh"):
        shutil.copy(ROOT / "integration" / name, repo / "integration" / name)
    (repo / "megacontext_plugin").symlink_to(ROOT / "megacontext_plugin")
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    (repo / ".venv" / "bin" / "python").write_text(f"""#!/bin/bash
ckpt() {{  # STAGE STEP: an empty stand-in for each file save_checkpoint (and with --mc the plugin) writes
    local d="$NANOCHAT_BASE_DIR/$1_checkpoints/d$depth" f; f=$(printf %06d "$2"); mkdir -p "$d"
    : >"$d/model_$f.pt"; : >"$d/meta_$f.json"; : >"$d/optim_${{f}}_rank0.pt"
    case " $args_line " in *" --mc "*) : >"$d/megacontext_$f.pt" ;; esac
}}
declare -A opt=([--depth]=12 [--resume-from-step]=0 [--save-every]=-1 [--num-iterations]=10 [--out]=x [--shards]=0)
args_line="$*"
args=("$@")
for ((i = 0; i < $#; i++)); do
    a=${{args[i]}}
    case $a in --*=*) opt[${{a%%=*}}]=${{a#*=}} ;; --*) opt[$a]=${{args[i+1]:-}} ;; esac
done
depth=${{STUB_DEPTH:-${{opt[--depth]}}}}
case "$*" in
    "-m megacontext_plugin.cli nanochat verify"*)
        echo "$4 (plain directory, nanochat 0000000, the ${{STUB_UPSTREAM:-pin}}): patched" ;;
    "-m megacontext_plugin.cli corpus"*)
        mkdir -p "${{opt[--out]}}"; echo "stub ran: $*"
        for ((i = 0; i < ${{opt[--shards]}}; i++)); do : >"${{opt[--out]}}/$(printf 'shard_%05d.parquet' $i)"; done
        if [ -n "${{opt[--train-files-out]:-}}" ]; then : >"${{opt[--train-files-out]}}"; fi
        if [ -n "${{opt[--doc-tokens]:-}}" ] && [ -n "${{STUB_LONG_CRASH:-}}" ]; then exit 1; fi ;;
    "-m megacontext_plugin.cli tasks"*)
        mkdir -p "${{opt[--out]}}"; echo "stub ran: $*" ;;
    "-m megacontext_plugin.cli eval validate"*) echo "stub ran: $*" ;;
    "-m megacontext_plugin."*) exec "{sys.executable}" "$@" ;;
    "-m nanochat.dataset -n "*)
        mkdir -p "$NANOCHAT_BASE_DIR/base_data"
        for ((i = 0; i < $4 - {short}; i++)); do
            : >"$NANOCHAT_BASE_DIR/base_data/$(printf 'shard_%05d.parquet' $i)"
        done
        echo "stub dataset: $4 shards" ;;
    "-m scripts.tok_train"*)
        mkdir -p "$NANOCHAT_BASE_DIR/tokenizer"; : >"$NANOCHAT_BASE_DIR/tokenizer/token_bytes.pt"
        echo "stub ran: $*" ;;
    "-m scripts.base_train"*)
        echo "stub ran: $*"
        n=${{opt[--num-iterations]}} every=${{opt[--save-every]}}
        for ((s = ${{opt[--resume-from-step]}} + 1; s <= n; s++)); do
            if [ $s = $n ] || {{ [ $every -gt 0 ] && [ $((s % every)) = 0 ]; }}; then ckpt base $s; fi
            if [ "$s" = "${{STUB_CRASH_AT:-}}" ]; then echo "stub: the machine is lost at step $s"; exit 1; fi
        done ;;
    "-m scripts.mid_train"*) ckpt mid 7; echo "stub ran: $*" ;;
    "-m scripts.chat_sft"*) ckpt chatsft 5; echo "stub ran: $*" ;;
    *) echo "stub ran: $*" ;;
esac
""")
    (bin_dir / "curl").write_text('#!/bin/bash\nwhile [ $# -gt 0 ]; do if [ "$1" = -o ]; then : >"$2"; fi; shift; '
                                  'done\necho "stub curl"\n')
    for f in (repo / ".venv" / "bin" / "python", bin_dir / "curl"):
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    return repo, env


def test_run10_logs_every_stage_and_the_background_download_to_report_log_txt(tmp_path: Path) -> None:
    repo, env = _fake_repo_for_run10(tmp_path)
    (tmp_path / "base" / "report").mkdir(parents=True)
    (tmp_path / "base" / "report" / "log.txt").write_text("an earlier run\n")
    proc = _bash(repo / "integration" / "run10.sh", "--gpu", "5090", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "base" / "report" / "log.txt").read_text()
    assert log.startswith("an earlier run\n== run10 started ")  # appended
    assert ("run10: pretraining shards: 3,093,299,200 tokens x 4.8 chars/token / 250,000,000 chars/shard / (1 - 0.35 "
            "cropped) = 91.4 -> 92 training shards + 1 validation = 93 (nanochat.dataset -n 93)") in log
    assert "-m nanochat.dataset -n 93 &\n" in log and "stub dataset: 93 shards" in log  # the background download
    assert "stub dataset: 93 shards" in (tmp_path / "base" / "dataset_download.log").read_text()
    assert "stub dataset: 93 shards" not in proc.stdout  # not over tok_train's output on the terminal
    for script in ("tok_train", "tok_eval", "base_train", "base_loss", "base_eval", "mid_train", "chat_sft"):
        assert f"+ {repo}/.venv/bin/python -m scripts.{script}" in log and f"stub ran: -m scripts.{script}" in log
    assert "stub curl" in log and log.rstrip().endswith("run10: done; report in " + str(tmp_path / "base" / "report"
                                                                                       / "report.md"))
    assert len(list((tmp_path / "base" / "base_data").glob("shard_*.parquet"))) == 93


def test_run10_stops_when_the_download_came_up_short(tmp_path: Path) -> None:
    repo, env = _fake_repo_for_run10(tmp_path, short=2)
    proc = _bash(repo / "integration" / "run10.sh", "--gpu", "h100", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("run10: error: only 91 of 93 shards in ") and proc.stderr.count("\n") == 1
    assert "-m scripts.base_train" not in proc.stdout
    assert "run10: error: only 91 of 93 shards" in (tmp_path / "base" / "report" / "log.txt").read_text()


def test_run10_dry_run_downloads_the_shards_the_budget_needs_and_writes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base"
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", env=os.environ | {"NANOCHAT_BASE_DIR": str(base)})
    assert proc.returncode == 0, proc.stderr
    assert "= 93 (nanochat.dataset -n 93)" in proc.stdout and "-m nanochat.dataset -n 93 &" in proc.stdout
    assert not base.exists()


@pytest.mark.integration
@pytest.mark.upstream("pin")  # master has no nanochat.report
def test_nanochats_report_reset_keeps_the_log(nanochat_dir: Path, tmp_path: Path) -> None:
    """The recipes start the log before `report reset`: reset removes only its sections and report.md."""
    pytest.importorskip("psutil", reason="nanochat.report imports psutil")
    report = tmp_path / "report"
    report.mkdir()
    (report / "log.txt").write_text("runcpu: == report reset\n")
    (report / "report.md").write_text("old")
    proc = subprocess.run([sys.executable, "-m", "nanochat.report", "reset"], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path,
                          env=os.environ | {"PYTHONPATH": str(nanochat_dir), "NANOCHAT_BASE_DIR": str(tmp_path),
                                            "PYTHONDONTWRITEBYTECODE": "1"})  # NANOCHAT_DIR stays untouched
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (report / "log.txt").read_text() == "runcpu: == report reset\n"
    assert (report / "header.md").is_file() and not (report / "report.md").exists()


# --- issue 29, "A re-run starts over": periodic checkpoints, and a re-run continues the run it finds ---

def _earlier_run10(base: Path, ledger: list[str], steps: dict[int, bool]) -> None:
    """What an interrupted run10.sh --gpu h100 left in BASE: its ledger (the command, then the stages done),
    the tokenizer, and base checkpoints at STEPS (True: whole; False: the optimizer's file never written)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "run10_stages.txt").write_text("".join(f"{line}\n" for line in ledger))
    (base / "tokenizer").mkdir()
    (base / "tokenizer" / "token_bytes.pt").write_bytes(b"")
    ckpt = base / "base_checkpoints" / "d12"
    ckpt.mkdir(parents=True)
    for step, whole in steps.items():
        optim = (f"optim_{step:06d}_rank0.pt",) if whole else ()
        for name in (f"model_{step:06d}.pt", f"meta_{step:06d}.json", *optim):
            (ckpt / name).write_bytes(b"")


def _files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


def test_run10_dry_run_continues_a_run_from_its_latest_checkpoint(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _earlier_run10(base, ["run10.sh --gpu h100", "report reset", "tok_train", "tok_eval"],
                   {250: True, 500: True, 750: False})  # step 750 was being saved when the machine went
    before = _files(base)
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", env=os.environ | {"NANOCHAT_BASE_DIR": str(base)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not _commands(out, "tok_train") and not _commands(out, "tok_eval") and "nanochat.report reset" not in out
    assert f"run10: skip tok_train: done by an earlier run ({base}/tokenizer/token_bytes.pt)\n" in out
    assert "run10: skip report reset: done by an earlier run\n" in out and "run10: resuming at base_train\n" in out
    (base_train,) = _commands(out, "base_train")
    assert base_train.split()[-3:] == ["--save-every=250", "--resume-from-step=500", "--run=dummy"]
    for script in ("base_loss", "base_eval", "mid_train", "chat_sft"):  # everything after the resume point runs
        assert _commands(out, script), script
    assert _files(base) == before  # a dry run writes nothing


def test_run10_fresh_starts_over_and_removes_what_the_earlier_run_left(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _earlier_run10(base, ["run10.sh --gpu 5090", "report reset", "tok_train"], {500: True})
    env = os.environ | {"NANOCHAT_BASE_DIR": str(base)}
    proc = _bash(RUN10, "--gpu", "h100", "--fresh", "--dry-run", env=env)  # --fresh: other arguments are fine
    assert proc.returncode == 0, proc.stderr
    assert _commands(proc.stdout, "tok_train") and "nanochat.report reset" in proc.stdout and "skip" not in proc.stdout
    (base_train,) = _commands(proc.stdout, "base_train")
    assert "--resume-from-step" not in base_train and "--save-every=250" in base_train
    for gone in ("run10_stages.txt", "tokenizer", "base_checkpoints/d12"):
        assert f"run10: --fresh: would remove {base}/{gone}\n" in proc.stdout
    assert (base / "base_checkpoints" / "d12" / "model_000500.pt").exists()  # would: nothing removed yet


@pytest.mark.parametrize(("gpu", "save_every", "flag"), [("5090", None, "--save-every=500"),
                                                          ("h100", None, "--save-every=250"),
                                                          ("h100", "100", "--save-every=100"),
                                                          ("5090", "-1", "--save-every=-1")])
def test_run10_base_train_saves_every_262m_tokens_or_mc_save_every(gpu: str, save_every: str | None,
                                                                     flag: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MC_SAVE_EVERY", "NANOCHAT_BASE_DIR")}
    env["NANOCHAT_BASE_DIR"] = "/nonexistent/mc-base"
    if save_every is not None:
        env["MC_SAVE_EVERY"] = save_every
    proc = _bash(RUN10, "--gpu", gpu, "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    (base_train,) = _commands(proc.stdout, "base_train")
    assert flag in base_train.split()


@pytest.mark.parametrize("case", ["no_ledger", "other_command", "output_gone", "bad_save_every"])
def test_run10_will_not_mix_runs_and_says_so_in_one_line(tmp_path: Path, case: str) -> None:
    base = tmp_path / "base"
    env = os.environ | {"NANOCHAT_BASE_DIR": str(base)}
    if case == "no_ledger":  # outputs no ledger accounts for (say upstream's own d12 run): not ours to reuse
        _earlier_run10(base, [], {})
        (base / "run10_stages.txt").unlink()
        needle = f"{base}/tokenizer is from a run with no ledger"
    elif case == "other_command":
        _earlier_run10(base, ["run10.sh --gpu 5090 --mc", "report reset"], {})
        needle = f"{base} holds a run started as 'run10.sh --gpu 5090 --mc': run that to continue it"
    elif case == "output_gone":
        _earlier_run10(base, ["run10.sh --gpu h100", "report reset", "tok_train"], {})
        (base / "tokenizer" / "token_bytes.pt").unlink()
        needle = "lists tok_train as done but"
    else:
        env["MC_SAVE_EVERY"] = "often"
        needle = "MC_SAVE_EVERY=often: expected a number of steps"
    proc = _bash(RUN10, "--gpu", "h100", "--dry-run", env=env)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("run10: error: ") and needle in proc.stderr
    assert case == "bad_save_every" or "add --fresh to start over" in proc.stderr
    assert not _commands(proc.stdout, "base_train")


def test_run10_rerun_after_a_lost_machine_continues_base_train_and_keeps_the_report(tmp_path: Path) -> None:
    repo, env = _fake_repo_for_run10(tmp_path)
    script, base = repo / "integration" / "run10.sh", tmp_path / "base"
    ckpt = base / "base_checkpoints" / "d12"
    lost = _bash(script, "--gpu", "h100", env=env | {"STUB_CRASH_AT": "700"}, cwd=tmp_path)
    assert lost.returncode == 2 and "stub: the machine is lost at step 700" in lost.stdout
    assert (base / "run10_stages.txt").read_text().splitlines() == ["run10.sh --gpu h100", "report reset", "tok_train",
                                                                     "tok_eval"]
    assert (ckpt / "optim_000500_rank0.pt").exists()  # saved every 250 steps: 500 is the latest

    again = _bash(script, "--gpu", "h100", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run10: base_train: resuming from step 500, the latest checkpoint in" in again.stdout
    (base_train,) = _commands(again.stdout, "base_train")
    assert "--resume-from-step=500" in base_train.split() and "--save-every=250" in base_train.split()
    log = (base / "report" / "log.txt").read_text()
    assert log.count("stub ran: -m nanochat.report reset") == 1  # the report is the first run's, continued
    assert log.count("stub ran: -m scripts.tok_train") == 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta_002950.json", "model_002950.pt",
                                                      "optim_002950_rank0.pt"]  # the last step is kept
    stages = (base / "run10_stages.txt").read_text().splitlines()
    assert stages[1:] == ["report reset", "tok_train", "tok_eval", "base_train", "base_loss", "base_eval",
                          "identity_conversations", "mid_train", "chat_eval mid", "chat_sft", "chat_eval sft"]

    done = _bash(script, "--gpu", "h100", env=env, cwd=tmp_path)  # a finished run: every stage is skipped
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run10: skip base_train: done by an earlier run ({ckpt}, step 2950)\n" in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith("+ ") and "-m scripts." in line] == []

    fresh = _bash(script, "--gpu", "h100", "--fresh", env=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert f"run10: --fresh: removing {ckpt}\n" in fresh.stdout and "skip" not in fresh.stdout
    (base_train,) = _commands(fresh.stdout, "base_train")
    assert "--resume-from-step" not in base_train
    assert (base / "report" / "log.txt").read_text().count("stub ran: -m nanochat.report reset") == 2


def test_runcpu_continues_an_unfinished_run_and_starts_a_finished_one_over(tmp_path: Path) -> None:
    repo, env = _fake_repo_for_run10(tmp_path, recipe="runcpu.sh")
    run_dir = tmp_path / "run"
    env = env | {"MC_RUNCPU_DIR": str(run_dir), "STUB_DEPTH": "4"}
    script = repo / "integration" / "runcpu.sh"
    lost = _bash(script, env=env | {"STUB_CRASH_AT": "30"}, cwd=tmp_path)
    assert lost.returncode == 2 and "runcpu: error: base failed" in lost.stderr

    again = _bash(script, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    for stage in ("data", "tasks", "report reset", "tokenizer"):
        assert f"runcpu: skip {stage}: done by an earlier run" in again.stdout
    assert "runcpu: base: resuming from step 20, the latest checkpoint in" in again.stdout
    base_train = next(line for line in again.stdout.splitlines() if line.startswith("stub ran: -m scripts.base_train"))
    assert " --save-every 20 --resume-from-step 20" in base_train
    assert (run_dir / "report" / "log.txt").read_text().count("stub ran: -m nanochat.report reset") == 1

    over = _bash(script, env=env, cwd=tmp_path)  # finished: the smoke test runs every stage again
    assert over.returncode == 0, over.stdout + over.stderr
    assert f"runcpu: starting over in {run_dir}: its run had finished" in over.stdout and "skip" not in over.stdout
    assert "--resume-from-step" not in over.stdout



QUALITY_SIZES = {"MC_Q_PLAIN_STEPS": "20", "MC_Q_STEPS": "10", "MC_Q_WARMUP_DOCS": "600", "MC_Q_LONG_DOCS": "80",
                 "MC_SAVE_EVERY": "4"}
"""runcpu_quality.sh at the stub's sizes: one shard of short documents and its validation shard, one of long
documents and theirs; a plain phase of 20 steps, a second of 10, saves every 4 steps."""


def _quality(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    repo, env = _fake_repo_for_run10(tmp_path, recipe="runcpu_quality.sh")
    run_dir = tmp_path / "run"
    env |= QUALITY_SIZES | {"MC_RUNCPU_DIR": str(run_dir), "STUB_DEPTH": "2"}
    return repo / "integration" / "runcpu_quality.sh", run_dir, env


def _base_trains(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("stub ran: -m scripts.base_train")]


def test_runcpu_quality_continues_its_second_phase_from_its_own_latest_save(tmp_path: Path) -> None:
    script, run_dir, env = _quality(tmp_path)
    ckpt = run_dir / "base_checkpoints" / "d2"
    lost = _bash(script, "--mc", env=env | {"STUB_CRASH_AT": "26"}, cwd=tmp_path)  # lost in the second phase
    assert lost.returncode == 2 and "runcpu_quality: error: base (MegaContext, window 1024) failed" in lost.stderr
    ledger = (run_dir / "runcpu_quality_stages.txt").read_text().splitlines()
    assert ledger[0].startswith("runcpu_quality.sh --mc; sizes: seq_plain=512 seq=1024 budget=64 plain_steps=20 ")
    assert ledger[1:] == ["data (short documents)", "report reset", "tokenizer", "data (documents of 1024 tokens)",
                          "tasks", "base (plain, window 512)"]
    (tasks,) = [ln for ln in lost.stdout.splitlines() if ln.startswith("stub ran: -m megacontext_plugin.cli tasks")]
    assert tasks.endswith(f" --out {run_dir}/tasks --max-seq-len 1024 --mid-train 6000")  # 20 a step of MC_Q_MID_STEPS
    # the plain phase kept its last save only; the second phase saved step 24 (and its aux nets) before it was lost
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "megacontext_000024.pt", "meta_000020.json", "meta_000024.json", "model_000020.pt", "model_000024.pt",
        "optim_000020_rank0.pt", "optim_000024_rank0.pt"]

    again = _bash(script, "--mc", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"runcpu_quality: continuing the unfinished run in {run_dir} (--fresh starts over)\n" in again.stdout
    for stage in ledger[1:]:
        assert again.stdout.count(f"runcpu_quality: skip {stage}: done by an earlier run") == 1, stage
    assert "runcpu_quality: resuming at base (MegaContext, window 1024)\n" in again.stdout
    assert (f"runcpu_quality: base (MegaContext, window 1024): resuming from step 24, the latest checkpoint in "
            f"{ckpt}\n") in again.stdout
    (base_train,) = _base_trains(again.stdout)
    assert " --save-every 4 " in base_train and " --num-iterations 30 --resume-from-step 24 " in base_train
    ran = [line.split()[3] for line in again.stdout.splitlines() if line.startswith("stub ran: -m ")]
    assert ran == ["scripts.base_train", "scripts.mid_train", "scripts.chat_sft", "scripts.base_eval",
                   "megacontext_plugin.cli", "nanochat.report"]  # the last: generate; the one before: eval validate
    log = (run_dir / "report" / "log.txt").read_text()
    assert log.count("stub ran: -m nanochat.report reset") == 1 and "stub ran: -m nanochat.report generate" in log
    assert sorted(p.name for p in ckpt.iterdir()) == [  # the plain phase's last step and the run's
        "megacontext_000030.pt", "meta_000020.json", "meta_000030.json", "model_000020.pt", "model_000030.pt",
        "optim_000020_rank0.pt", "optim_000030_rank0.pt"]
    assert (run_dir / "runcpu_quality_stages.txt").read_text().splitlines()[-1] == "report"

    over = _bash(script, "--mc", env=env, cwd=tmp_path)  # finished: it starts over
    assert over.returncode == 0, over.stdout + over.stderr
    assert f"runcpu_quality: starting over in {run_dir}: its run had finished\n" in over.stdout
    assert "skip" not in over.stdout and "resuming" not in over.stdout
    assert [" --resume-from-step " in line for line in _base_trains(over.stdout)] == [False, True]


def test_runcpu_quality_resumes_its_plain_phase_and_redoes_a_data_stage_lost_part_way(tmp_path: Path) -> None:
    script, run_dir, env = _quality(tmp_path)
    data = run_dir / "base_data"
    lost = _bash(script, env=env | {"STUB_LONG_CRASH": "1"}, cwd=tmp_path)  # lost while writing the long documents
    assert lost.returncode == 2 and "runcpu_quality: error: data (documents of 1024 tokens) failed" in lost.stderr
    assert (run_dir / "long_data").is_dir()  # what the lost try left; the short validation shard is gone
    (data / "shard_00007.parquet").write_bytes(b"")  # and, say, a long shard it had moved in
    lost = _bash(script, env=env | {"STUB_CRASH_AT": "10"}, cwd=tmp_path)  # then lost in the plain phase
    assert lost.returncode == 2 and "runcpu_quality: error: base (plain, window 512) failed" in lost.stderr
    assert "runcpu_quality: resuming at data (documents of 1024 tokens)\n" in lost.stdout
    assert sorted(p.name for p in data.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet",
                                                     "shard_00002.parquet"]  # short, long, long's validation
    assert not (run_dir / "long_data").exists()

    again = _bash(script, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "runcpu_quality: skip data (documents of 1024 tokens): done by an earlier run" in again.stdout
    assert "runcpu_quality: base (plain, window 512): resuming from step 8, the latest checkpoint in" in again.stdout
    plain, second = _base_trains(again.stdout)
    assert " --num-iterations 20 " in plain and plain.endswith(" --resume-from-step 8")
    assert " --resume-from-step 20 " in second and " --mc_plain_steps" not in second
    assert sorted(p.name for p in (run_dir / "base_checkpoints" / "d2").glob("model_*")) == [
        "model_000020.pt", "model_000030.pt"]


def test_runcpu_quality_on_master_trains_one_sft_stage_and_writes_no_upstream_report(tmp_path: Path) -> None:
    script, run_dir, env = _quality(tmp_path)
    env |= {"STUB_UPSTREAM": "master", "MC_Q_MID_STEPS": "6", "MC_Q_SFT_STEPS": "4", "MC_Q_CHAT_STEPS": "10"}
    proc = _bash(script, "--mc", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = [line.split(" ", 4)[3:] for line in proc.stdout.splitlines() if line.startswith("stub ran: -m ")]
    assert [r[0] for r in ran] == ["megacontext_plugin.cli", "scripts.tok_train", "megacontext_plugin.cli",
                                   "megacontext_plugin.cli", "scripts.base_train", "scripts.base_train",
                                   "scripts.chat_sft", "scripts.base_eval", "megacontext_plugin.cli"]
    tasks = ran[3][1]
    assert tasks.startswith(f"tasks --upstream master --out {run_dir} ")  # master's dataset cache, in the run
    assert tasks.endswith(f" --tokenizer {run_dir}/tokenizer")  # rows counted as master's loader will (D52)
    assert " --mid-train 100 --sft-train 50 " in tasks  # 15 a step: master's chat_sft ends with its data's epoch
    sft = ran[6][1]
    assert " --num-iterations 10 " in sft and " --init-lr-frac 0.1 " in sft
    assert " --mmlu-epochs 0 --gsm8k-epochs 0 " in sft and (sft + " ").count(" --mc ") == 1
    assert " --eval bpb " in ran[7][1]
    assert "nanochat.report" not in proc.stdout  # master has none: the validations write the plugin's own
    assert f"runcpu_quality: report (the plugin's own: master writes none): {run_dir}/report/report.md" in proc.stdout
    stages = [line.rsplit(" ", 1)[0] for line in (run_dir / "stage_seconds.txt").read_text().splitlines()]
    assert stages == ["data (short documents)", "tokenizer", "data (documents of 1024 tokens)", "tasks",
                      "base (plain, window 512)", "base (MegaContext, window 1024)", "sft", "base eval", "sft eval"]
    assert "upstream=master" in (run_dir / "recipe_sizes.txt").read_text().splitlines()

    # from that plain phase, master's conversation cache is written afresh, not copied (a source's may predate D52)
    again = _bash(script, "--mc", env=env | {"MC_Q_FROM_PLAIN": str(run_dir), "MC_RUNCPU_DIR": str(tmp_path / "abl"),
                                             "MC_Q_STEPS": "5"}, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    rewritten = [line for line in again.stdout.splitlines()
                 if line.startswith("stub ran: -m megacontext_plugin.cli tasks")]
    assert len(rewritten) == 1 and f" --out {tmp_path / 'abl'} " in rewritten[0]
    assert rewritten[0].endswith(f" --tokenizer {tmp_path / 'abl'}/tokenizer")

    # a plain phase trained on the other nanochat is refused, in one line, before anything is wiped
    other = _bash(script, env=env | {"STUB_UPSTREAM": "pin", "MC_Q_FROM_PLAIN": str(run_dir), "MC_Q_STEPS": "5",
                                     "MC_RUNCPU_DIR": str(tmp_path / "baseline")}, cwd=tmp_path)
    assert other.returncode == 2 and other.stderr == (f"runcpu_quality: error: MC_Q_FROM_PLAIN={run_dir} was trained "
                                                      f"on nanochat's master, this tree is pin\n")


def test_the_callers_environment_wins_over_mc_env(tmp_path: Path) -> None:
    script, run_dir, env = _quality(tmp_path)
    repo = script.parents[1]
    (repo / ".mc_env").write_text(f"export MC_NANOCHAT={tmp_path / 'from_mc_env'}\nexport WANDB_RUN=from-mc-env\n")
    (tmp_path / "mine").mkdir()
    proc = _bash(script, "--mc", env=env | {"MC_NANOCHAT": str(tmp_path / "mine")}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base_train = _base_trains(proc.stdout)[0]
    assert " --run from-mc-env " in base_train  # what the caller did not set comes from .mc_env
    log = (run_dir / "runcpu_quality.log").read_text()
    assert "stub ran: -m scripts.base_train" in log
    assert str(tmp_path / "from_mc_env") not in proc.stdout + log


@pytest.mark.parametrize("case", ["other_arguments", "other_sizes", "no_ledger", "fresh"])
def test_runcpu_quality_starts_over_and_says_why(tmp_path: Path, case: str) -> None:
    script, run_dir, env = _quality(tmp_path)
    lost = _bash(script, env=env | {"STUB_CRASH_AT": "10"}, cwd=tmp_path)
    assert lost.returncode == 2
    args, why = [], {"other_arguments": "it held a run of 'runcpu_quality.sh'",
                     "other_sizes": "its run had other sizes: steps=10 (now 12), sft_steps=40 (now 2)",
                     "no_ledger": "no ledger says what it held", "fresh": "--fresh"}[case]
    if case == "other_arguments":
        args = ["--mc", "--mc_horizon", "32"]
    elif case == "other_sizes":
        env |= {"MC_Q_STEPS": "12", "MC_Q_SFT_STEPS": "2"}
    elif case == "no_ledger":
        (run_dir / "runcpu_quality_stages.txt").unlink()
    else:
        args = ["--fresh"]
    proc = _bash(script, *args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"runcpu_quality: starting over in {run_dir}: {why}\n" in proc.stdout
    assert "skip" not in proc.stdout and "resuming" not in proc.stdout
    assert (run_dir / "report" / "log.txt").read_text().count("stub ran: -m nanochat.report reset") == 1
    command = "runcpu_quality.sh --mc --mc_horizon 32" if case == "other_arguments" else "runcpu_quality.sh"
    assert (run_dir / "runcpu_quality_stages.txt").read_text().startswith(f"{command}; sizes: ")  # not --fresh


def test_lib_finds_the_latest_whole_checkpoint_and_prunes_the_older_ones(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for step in (999999, 1000000):  # 7 digits past 999,999 (nanochat's :06d): numeric order, not the names'
        for name in (f"model_{step:06d}.pt", f"meta_{step:06d}.json", f"optim_{step:06d}_rank0.pt",
                     f"megacontext_{step:06d}.pt"):
            (ckpt / name).write_bytes(b"")
    (ckpt / "model_1000500.pt").write_bytes(b"")  # saved in part: the optimizer's file never came
    (ckpt / "meta_1000500.json").write_bytes(b"")
    (ckpt / "model_2000000.pt").write_bytes(b"")  # the model only: meta_ not written yet
    (ckpt / "meta_latest.json").write_bytes(b"")
    proc = _lib(tmp_path, f'echo "[$(mc_latest_step {ckpt} optim)] [$(mc_latest_step {ckpt})] '
                          f'[$(mc_latest_step {tmp_path / "none"})]"; mc_prune_checkpoints {ckpt} 1')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[1000000] [1000500] []\n"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "megacontext_1000000.pt", "meta_1000000.json", "meta_1000500.json", "meta_latest.json", "model_1000000.pt",
        "model_1000500.pt", "model_2000000.pt", "optim_1000000_rank0.pt"]


def test_lib_prunes_all_but_the_latest_and_the_steps_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for step in (2, 4, 6, 9):
        for name in (f"model_{step:06d}.pt", f"meta_{step:06d}.json", f"optim_{step:06d}_rank0.pt"):
            (ckpt / name).write_bytes(b"")
    proc = _lib(tmp_path, f"mc_prune_checkpoints {ckpt} 1 4")  # runcpu_quality.sh keeps its plain phase's last step
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in ckpt.glob("model_*")) == ["model_000004.pt", "model_000009.pt"]
