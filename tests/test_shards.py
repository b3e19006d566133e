"""The pretraining shards a nanochat run needs, by upstream speedrun.sh's arithmetic (issue 29)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin.cli import main
from megacontext_plugin.data.shards import AVAILABLE, CHARS_PER_SHARD, CHARS_PER_TOKEN, shard_plan

ROOT = Path(__file__).resolve().parents[1]


def test_run10s_budget_needs_92_training_shards_not_64() -> None:
    """run10.sh: 5,900 steps of 524,288 tokens (an H100: 2,950 of 1,048,576, the same tokens)."""
    plan = shard_plan(5900 * 524288)
    assert plan.tokens == 3_093_299_200
    assert plan.exact == pytest.approx(91.37, abs=0.01)  # 59.4 shards of text, 35% of what is read cropped
    assert (plan.train, plan.total) == (92, 93)  # plus the validation shard: nanochat.dataset -n 93
    assert shard_plan(2950 * 1048576) == plan
    assert plan.describe() == ("3,093,299,200 tokens x 4.8 chars/token / 250,000,000 chars/shard / (1 - 0.35 "
                               "cropped) = 91.4 -> 92 training shards + 1 validation = 93 (nanochat.dataset -n 93)")


def test_speedruns_own_comment_is_reproduced() -> None:
    """speedrun.sh: d20 = 561M params x 20 = 11.2B tokens x 4.8 = 54B chars / 250M = ~216 shards before cropping."""
    tokens = 561_000_000 * 20
    assert tokens * CHARS_PER_TOKEN / CHARS_PER_SHARD == pytest.approx(215.4, abs=0.1)
    assert shard_plan(tokens).train == 332  # 215.4 / 0.65, rounded up (upstream rounds 216 to 240 first: 370)


def test_a_budget_beyond_the_dataset_is_capped_and_says_so() -> None:
    plan = shard_plan(10**12)
    assert plan.total == AVAILABLE and "the dataset holds only 1,823 shards" in plan.describe()
    assert shard_plan(1).total == 2  # one training shard and the validation shard
    with pytest.raises(ValueError):
        shard_plan(0)


def test_megacontext_shards_prints_the_arithmetic_or_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "--tokens", "3_093_299_200"]) == 0
    assert capsys.readouterr().out.endswith("= 93 (nanochat.dataset -n 93)\n")
    assert main(["shards", "--params", "561e6", "--ratio", "20", "--count"]) == 0
    assert capsys.readouterr().out == "333\n"


@pytest.mark.parametrize(("argv", "needle"), [
    (["--tokens", "lots"], "argument --tokens: expected a number, got 'lots'"),
    (["--params", "1e9"], "--params and --ratio go together"),
    ([], "give either --tokens or --params with --ratio"),
])
def test_shards_mistakes_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["shards", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err


def test_the_module_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """run10.sh runs it with any python3 before the venv exists: -S (no site-packages), the checkout on the path."""
    proc = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from megacontext_plugin.data.shards import main; sys.exit(main(['--tokens', '3.1e9', "
                           "'--count']))", str(ROOT)], capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "93\n"
