"""The offline parquet corpus writer: nanochat shard layout, determinism, overwrite refusal, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet")

from megacontext_plugin.data import corpus  # noqa: E402


def _texts(path: Path) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


def test_round_trip_nanochat_layout(tmp_path: Path) -> None:
    out = tmp_path / "base_data"
    summary = corpus.write_corpus(out, num_shards=3, docs_per_shard=12, seed=1, row_groups=3)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert summary.shards == tuple(names) and summary.val_shard == "shard_00002.parquet"
    assert summary.documents == 36 and sum(summary.kinds.values()) == 36
    total = 0
    for name in names:
        pf = pq.ParquetFile(out / name)
        assert pf.num_row_groups == 3
        assert "text" in pf.schema_arrow.names
        rows = [t for rg in range(pf.num_row_groups) for t in pf.read_row_group(rg).column("text").to_pylist()]
        assert len(rows) == 12 and all(isinstance(t, str) and len(t) > 0 for t in rows)
        total += sum(len(t) for t in rows)
    assert summary.characters == total
    # nanochat's split rule: all but the last shard is train, the last is val
    assert corpus.read_split(out, "val") == _texts(out / "shard_00002.parquet")
    assert corpus.read_split(out, "train") == _texts(out / "shard_00000.parquet") + _texts(out / "shard_00001.parquet")
    every = "\n".join(corpus.read_split(out, "train"))
    assert "What is the pass key? The pass key is" in every and re.search(r"key \w+ -> value \d+\.", every)


def test_same_seed_same_corpus_and_rewrite_over_own_shards(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    corpus.write_corpus(a, 2, 8, seed=5)
    corpus.write_corpus(b, 2, 8, seed=5)
    assert _texts(a / "shard_00001.parquet") == _texts(b / "shard_00001.parquet")
    corpus.write_corpus(b, 3, 8, seed=6)  # our own shards may be replaced
    assert _texts(b / "shard_00001.parquet") != _texts(a / "shard_00001.parquet")
    corpus.write_corpus(b, 2, 8, seed=5)  # fewer shards: the stale third one must not stay as "val"
    assert sorted(p.name for p in b.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert _texts(b / "shard_00001.parquet") == _texts(a / "shard_00001.parquet")


def test_refuses_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"refusing to write .*notes\.txt"):
        corpus.write_corpus(tmp_path, 2, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "shard_00000.parquet").write_bytes(b"not ours")  # a shard-named file we did not write
    with pytest.raises(FileExistsError, match=r"shard_00000\.parquet"):
        corpus.write_corpus(other, 2, 4)
    assert (other / "shard_00000.parquet").read_bytes() == b"not ours"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_shards": 1}, "num_shards"),
        ({"docs_per_shard": 0}, "docs_per_shard"),
        ({"mix": {"passkey": 1.0, "poems": 1.0}}, "unknown document kinds"),
        ({"mix": {"passkey": 0.0}}, "mix weights"),
        ({"min_chars": 2000, "max_chars": 1000}, "max_chars"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"num_shards": 2, "docs_per_shard": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        corpus.write_corpus(tmp_path / "c", **args)


def test_mix_restricts_kinds(tmp_path: Path) -> None:
    s = corpus.write_corpus(tmp_path, 2, 10, mix={"passkey": 1.0})
    assert s.kinds == {"passkey": 20}
    assert all(t.endswith(".") and "pass key is" in t for t in corpus.read_split(tmp_path, "train"))


def test_main_writes_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert corpus.main(["--out", str(tmp_path / "c"), "--shards", "2", "--docs-per-shard", "4", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "[2/2] shard_00001.parquet (val)" in out and "8 documents" in out
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    assert corpus.main(["--out", str(tmp_path / "d")]) == 1
    assert "refusing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--out", "X", "--shards", "1"], ["--out", "X", "--seed", "abc"], ["--shards", "2"], ["--out", "X", "--bogus"]],
)
def test_cli_bad_flags_exit_2_without_traceback(tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "megacontext_plugin.data.corpus", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_megacontext_corpus_subcommand_writes_shards(tmp_path, capsys) -> None:
    pytest.importorskip("pyarrow")
    from megacontext_plugin.cli import main as cli_main

    out = tmp_path / "corpus"
    assert cli_main(["corpus", "--out", str(out), "--shards", "2", "--docs-per-shard", "3", "--seed", "5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert "wrote 2 shards" in capsys.readouterr().out
