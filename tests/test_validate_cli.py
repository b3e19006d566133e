"""``megacontext eval validate``: the post-run validation of any checkpoint of a nanochat run. The success
path (a run's SFT checkpoint validated into its report) is the quality recipe's integration test's
(``test_runcpu_quality.py``); here, the refusals that come before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from megacontext_plugin.cli import main
from megacontext_plugin.evaluation.validate_cli import source_of


@pytest.mark.parametrize(("directory", "source"), [("chatsft_checkpoints", "sft"), ("base_checkpoints", "base"),
                                                    ("mid_checkpoints", "mid"), ("somewhere", None)])
def test_the_source_comes_from_nanochats_layout(tmp_path: Path, directory: str, source: str | None) -> None:
    (tmp_path / directory / "d4").mkdir(parents=True)
    assert source_of(tmp_path / directory / "d4") == source


def test_a_missing_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "validate", "--checkpoint", str(tmp_path / "nothing")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err and "Traceback" not in err


def test_a_directory_outside_nanochats_layout_asks_for_the_source(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "validate", "--checkpoint", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --source" in err


def test_a_directory_without_checkpoints_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "chatsft_checkpoints" / "d4").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        main(["eval", "validate", "--checkpoint", str(tmp_path / "chatsft_checkpoints" / "d4")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no nanochat checkpoint" in err
