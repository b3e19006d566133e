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
    assert "not empty" in capsys.readouterr().err
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


@pytest.mark.parametrize("case", ["vocab", "file", "uncreatable"])
def test_user_mistakes_are_one_line_without_a_traceback(case: str, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("user data")
    argv = {"vocab": ["demo", "--vocab", "1", "--tokens", "5000", "--tree", "ram"],
            "file": ["demo", "--dir", str(a_file), "--tokens", "5000"],
            "uncreatable": ["demo", "--dir", "/proc/no/such/dir", "--tokens", "5000"]}[case]
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", *argv], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("megacontext demo: error:")
    assert a_file.read_text() == "user data" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("out", ["a_file", "/proc/no/such/dir"])
def test_train_tiny_refuses_an_output_it_cannot_use(out: str, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("user data")
    target = str(a_file) if out == "a_file" else out
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "train-tiny", "--out", target],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("megacontext eval train-tiny: error: --out")
    assert "Traceback" not in proc.stderr
    assert a_file.read_text() == "user data"


def test_demo_budget_too_small_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tokens", "100000", "--budget", "257", "--recent-tokens", "256", "--tree", "ram"]) == 1
    assert "cannot hold" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [("--allocator_expand_threshold", "5"), ("--allocator_collapse_threshold", "-1"),
                                  ("--allocator_expand_neighbours", "-1"), ("--allocator_recent_tokens", "-3"),
                                  ("--threads", "-1"), ("--mc_lens_teacher_weight", "-1"), ("--lensnet_layers", "0"),
                                  ("--lensnet_dim", "0"), ("--block-size", "12"), ("--mc_train_wc_length", "0.0625")])
def test_train_tiny_refuses_a_knob_out_of_range_before_writing(flag: tuple[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "train-tiny", "--out", str(out),
                           *flag], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("megacontext eval train-tiny: error:")
    assert not out.exists()
