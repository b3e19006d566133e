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


def _read_split(out_dir: Path, split: str) -> list[str]:
    """All texts of a split as nanochat reads it: every shard but the last is train, the last is val."""
    assert split in ("train", "val"), split
    paths = sorted(p for p in out_dir.iterdir() if re.fullmatch(r"shard_\d{5}\.parquet", p.name))
    assert paths, f"no shard_NNNNN.parquet files in {out_dir}"
    texts: list[str] = []
    for path in paths[:-1] if split == "train" else paths[-1:]:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            texts.extend(pf.read_row_group(rg, columns=["text"]).column("text").to_pylist())
    return texts


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
    assert _read_split(out, "val") == _texts(out / "shard_00002.parquet")
    assert _read_split(out, "train") == _texts(out / "shard_00000.parquet") + _texts(out / "shard_00001.parquet")
    every = "\n".join(_read_split(out, "train"))
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
    assert all(t.endswith(".") and "pass key is" in t for t in _read_split(tmp_path, "train"))


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


def _byte_tokenizer(directory: Path) -> Path:
    """A tiktoken encoding of single bytes pickled as nanochat's tok_train writes ``tokenizer.pkl``."""
    import pickle

    import tiktoken

    enc = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
    return directory


def test_warmup_shards_hold_short_documents_and_the_rest_exactly_doc_tokens(tmp_path: Path) -> None:
    tok = corpus.load_tokenizer(_byte_tokenizer(tmp_path / "tok"))
    corpus.write_corpus(tmp_path / "c", 4, 12, mix={"passkey": 1.0, "recall": 1.0}, warmup_shards=1,
                        warmup_max_chars=600, doc_tokens=700, tokenizer=tok)
    shards = sorted((tmp_path / "c").glob("shard_*.parquet"))
    assert all(300 <= len(t) <= 600 for t in _texts(shards[0]))
    for shard in shards[1:]:
        texts = _texts(shard)
        assert len(texts) == 12 and {len(tok[0](t)) for t in texts} == {700}
        assert all(re.search(r"\d\.?$", t) for t in texts)  # the answer ends the document


def test_fit_to_tokens_cuts_the_front_and_keeps_the_end() -> None:
    tok = (lambda s: list(s.encode()), lambda ids: bytes(ids).decode())
    assert corpus.fit_to_tokens("abcdefgh", 3, tok) == "fgh"
    assert corpus.fit_to_tokens("ab", 3, tok) is None


def test_python_documents_come_from_the_training_split_that_is_written_down(tmp_path: Path) -> None:
    from megacontext_plugin.data import stdlib_text

    listing = tmp_path / "corpus_train_files.txt"
    s = corpus.write_corpus(tmp_path / "c", 2, 8, mix={"python": 1.0}, train_files_out=listing, seed=3)
    train, held = stdlib_text.split(0)  # the split's own seed, not the corpus's
    root = stdlib_text.stdlib_root()
    assert listing.read_text().splitlines() == [p.relative_to(root).as_posix() for p in train]
    assert held and not set(held) & set(train) and s.kinds == {"python": 16}
    sources = {p: stdlib_text.read_source(p) for p in train}
    for text in _read_split(tmp_path / "c", "train"):
        assert any(text in source for source in sources.values())
    assert not any(stdlib_text.is_held_out(p, 0) for p in train)


def test_the_mix_flag_is_checked_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.data.corpus", "--out", str(tmp_path / "o"),
                           "--mix", "passkey=1,novel=2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown document kinds in mix: ['novel']" in proc.stderr
    assert "Traceback" not in proc.stderr
