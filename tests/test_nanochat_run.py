"""``megacontext nanochat run SCRIPT -- ARGS``: a patched tree's script, run as the recipes run it (issue 29)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin.cli import main, wants_megacontext

ROOT = Path(__file__).resolve().parents[1]
HELLO = """import json, os, sys
print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "python": sys.executable,
                  "env": {k: os.environ.get(k) for k in ("PYTHONPATH", "NANOCHAT_BASE_DIR", "NANOCHAT_PLUGINS")}}))
sys.exit(int(os.environ.get("HELLO_EXIT", "0")))
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A stand-in for the patched tree: scripts/hello.py prints what it was given."""
    (tmp_path / "nc" / "scripts").mkdir(parents=True)
    (tmp_path / "nc" / "scripts" / "hello.py").write_text(HELLO)
    (tmp_path / "nc" / "scripts" / "base_eval.py").write_text("")
    (tmp_path / "run").mkdir()
    return tmp_path / "nc"


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("MC_NANOCHAT", "NANOCHAT_PLUGINS", "NANOCHAT_BASE_DIR")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "nanochat", "run", *args],
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=base | env)


@pytest.mark.parametrize("mc", [True, False])
def test_it_runs_the_script_in_the_tree_with_the_runs_environment(tree: Path, mc: bool) -> None:
    args = ["-i", "sft", "--mc", "--block_size", "8"] if mc else ["-i", "sft"]
    proc = _run(["hello", "--nanochat", str(tree), "--run-dir", str(tree.parent / "run"), "--", *args],
                cwd=tree.parent, HELLO_EXIT="3")
    assert proc.returncode == 3, proc.stderr  # the script's own exit status
    seen = json.loads(proc.stdout)
    assert seen["cwd"] == str(tree) and seen["argv"] == args  # `--` is ours, never the script's
    assert seen["python"] == sys.executable  # the Python that runs `megacontext`: the venv's
    assert seen["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(tree)
    assert seen["env"]["NANOCHAT_BASE_DIR"] == str(tree.parent / "run")
    assert seen["env"]["NANOCHAT_PLUGINS"] == ("megacontext" if mc else "none")
    assert proc.stderr.startswith(f"megacontext nanochat run: scripts.hello in {tree}, NANOCHAT_BASE_DIR=")


def test_the_defaults_work_from_the_repository_root(tree: Path) -> None:
    """.mc/nanochat and .mc/runcpu, relative to where it runs (the README's commands run from the root)."""
    repo = tree.parent / "repo"
    (repo / ".mc").mkdir(parents=True)
    tree.rename(repo / ".mc" / "nanochat")
    (repo / ".mc" / "runcpu").mkdir()
    proc = _run(["hello.py", "--", "--mc_enabled", "1"], cwd=repo)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["env"]["NANOCHAT_BASE_DIR"] == str(repo / ".mc" / "runcpu")
    assert seen["env"]["NANOCHAT_PLUGINS"] == "megacontext"
    elsewhere = _run(["hello", "--run-dir", str(repo / ".mc" / "runcpu")], cwd=tree.parent,
                     MC_NANOCHAT=str(repo / ".mc" / "nanochat"))  # MC_NANOCHAT (.mc_env's) names the tree
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout)["cwd"] == str(repo / ".mc" / "nanochat")


@pytest.mark.parametrize(("argv", "needle"), [
    (["nanochat", "run"], "the following arguments are required: SCRIPT"),
    (["nanochat", "run", "hello", "-i", "sft"], "unrecognized arguments: -i sft (the script's arguments go after --: "
                                                "megacontext nanochat run hello -- -i sft)"),
    (["nanochat", "run", "chat", "--nanochat", "{tree}", "--run-dir", "{run}"],
     "unknown script 'chat'; {tree}/scripts has: base_eval, hello"),
    (["nanochat", "run", "hello", "--nanochat", "{run}/none"],
     "{run}/none is not a nanochat tree (no scripts/ inside)"),
    (["nanochat", "run", "hello", "--nanochat", "{tree}", "--run-dir", "{run}/none", "--", "--mc"],
     "no run directory {run}/none (the NANOCHAT_BASE_DIR of a run"),
])
def test_mistakes_are_one_line_and_exit_2(tree: Path, argv: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MC_NANOCHAT", raising=False)
    monkeypatch.chdir(tree.parent)  # no .mc/ here
    names = {"tree": str(tree), "run": str(tree.parent / "run")}
    argv = [a.format(**names) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("megacontext nanochat run: error: ")
    assert needle.format(**names) in out.err


def test_wants_megacontext_reads_the_switch_as_the_scripts_do() -> None:
    assert wants_megacontext(["-i", "sft", "--mc"])
    assert wants_megacontext(["--mc-enabled", "1"]) and wants_megacontext(["--mc_enabled=1"])
    assert not wants_megacontext(["--mc", "--mc_enabled", "0"])  # the last one given wins
    assert not wants_megacontext(["-i", "sft", "-p", "--mc is a flag"])
    assert wants_megacontext(["--mc", "--block_size", "lots"])  # a bad knob is the script's to report
