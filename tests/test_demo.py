"""``megacontext demo`` (the README's no-nanochat check) runs end to end and reports what it checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin.cli import main


@pytest.mark.parametrize("tree", ["ram", "disk"])
def test_demo_finds_the_needle_and_reopens(tree: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--tokens", "120000", "--tree", tree, "--seed", "1"]
    if tree == "disk":
        args += ["--dir", str(tmp_path / "t")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "needle raw in the working context: yes" in out
    assert "demo: OK" in out
    if tree == "disk":
        assert "all 120,000 tokens and their gists are back" in out
        assert (tmp_path / "t").is_dir()


def test_demo_refuses_a_non_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--tokens", "5000", "--dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().out
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--block-size", "12"], "power of two"),
        (["--tokens", "-5"], "positive integer"),
        (["--tree", "s3"], "invalid choice"),
    ],
)
def test_demo_bad_flags_are_one_clear_error(argv: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "demo", *argv],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_budget_too_small_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tokens", "100000", "--budget", "257", "--recent-tokens", "256", "--tree", "ram"]) == 1
    assert "cannot hold" in capsys.readouterr().out
