"""Offline chat conversations for nanochat mid-training and SFT: CustomJSON rules, answers, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext_plugin.cli import main as cli_main
from megacontext_plugin.data import conversations as conv
from megacontext_plugin.data.conversations import KINDS, SPLITS, Lengths

SETTINGS = settings(max_examples=50, deadline=None)
FILES = [f"{s}.jsonl" for s in SPLITS]
SMALL = {"mid_train": 12, "mid_val": 3, "sft_train": 8, "sft_val": 2}


def nanochat_customjson_check(messages: object) -> None:
    """Independent copy of the asserts in nanochat's ``tasks/customjson.py`` (at the pin)."""
    assert isinstance(messages, list), f"Expected list of messages, got {type(messages)}"
    assert len(messages) >= 2, f"Conversation must have at least 2 messages, got {len(messages)}"
    for i, message in enumerate(messages):
        assert isinstance(message, dict)  # nanochat's `"role" in message` assumes an object
        assert "role" in message, f"Message {i} missing 'role' field"
        assert "content" in message, f"Message {i} missing 'content' field"
        expected_role = "user" if i % 2 == 0 else "assistant"
        assert message["role"] == expected_role, f"Message {i} has role {message['role']}"
        assert isinstance(message["content"], str), f"Message {i} content must be a string"


def _num_chars(c: conv.Conversation) -> int:
    """Characters of the conversation's message contents."""
    return sum(len(m["content"]) for m in c.messages)


def _lines(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_answers(c: conv.Conversation) -> None:
    """The assistant's answers are the planted values, recoverable from the earlier user turns."""
    msgs = c.messages
    users = [m["content"] for m in msgs if m["role"] == "user"]
    assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
    if c.kind == "passkey":
        (key,) = c.answers
        assert re.fullmatch(r"[1-9]\d{2,5}", key)
        assert assistants[-1] == f"The pass key is {key}." and users[-1].endswith(conv.PASSKEY_QUESTION)
        assert users[0].count(f"The pass key is {key}. Remember it.") == 1
        assert users[0].count("The pass key is") == 1
    elif c.kind == "recall":
        replies = assistants if users[0].endswith("?") else assistants[1:]
        assert len(replies) == len(c.answers) >= 1
        for user, reply, value in zip(users[-len(replies):], replies, c.answers, strict=True):
            key = re.fullmatch(r"What is the value of key (\w{3})\?", user.rsplit("\n\n", 1)[-1]).group(1)
            assert reply == f"key {key} -> value {value}."
            assert users[0].count(f"key {key} -> value {value}.") == 1  # planted once, in the pasted notes
    elif c.kind == "fact":
        asked = assistants[-len(c.answers):]
        assert len(msgs) >= 2 * (1 + 2 + len(c.answers))  # the statement, >= 2 exchanges, the questions
        for reply, name in zip(asked, c.answers, strict=True):
            subject = re.fullmatch(rf"Your (\w+) is called {name}\.", reply).group(1)
            assert f"My {subject} is called {name}." in users[0]
            assert sum(bool(re.search(rf"\b{name}\b", u)) for u in users) == 1  # only the first turn states it
    elif c.kind == "arithmetic":
        assert len(c.answers) == len(assistants)
        for user, reply, result in zip(users, assistants, c.answers, strict=True):
            a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", user).groups()
            assert reply == f"{a} {op} {b} = {result}."
            assert int(result) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] >= 0
    else:
        assert c.kind == "identity" and not c.answers
        assert all(pair in conv.IDENTITY for pair in zip(users, assistants, strict=True))


# ---------------------------------------------------------------------------------------------- generators


@SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
    max_seq_len=st.integers(64, 1024),
    factor=st.floats(1.0, 8.0),
)
def test_any_seed_and_lengths_give_valid_checkable_conversations(
    kind: str, seed: int, max_seq_len: int, factor: float
) -> None:
    if max_seq_len * factor < conv.MIN_MAX_TOKENS:
        with pytest.raises(ValueError, match="max_seq_len x length_factor"):
            Lengths(max_seq_len, factor)
        return
    lengths = Lengths(max_seq_len, factor)
    c = conv.make_conversation(kind, seed, lengths)
    assert c.kind == kind
    nanochat_customjson_check(json.loads(c.to_json()))
    assert c.messages[-1]["role"] == "assistant" and all(m["content"] for m in c.messages)
    assert lengths.min_chars <= _num_chars(c) <= lengths.max_chars
    _check_answers(c)
    assert conv.make_conversation(kind, seed, lengths) == c


def test_lengths_span_64_tokens_to_several_windows() -> None:
    lengths = Lengths()  # 256 tokens x 4
    chars = [_num_chars(c) for c in conv.generate_conversations(0, "mid_train", 600, lengths=lengths)]
    assert lengths.min_chars == 148 and lengths.max_chars == 2355
    assert min(chars) >= lengths.min_chars and max(chars) <= lengths.max_chars
    window = 256 * conv.CHARS_PER_TOKEN
    assert 0.3 < sum(n <= window for n in chars) / len(chars) < 0.8  # about half fit one window
    assert max(chars) > 2.5 * window  # and some need several


def test_mix_and_split_streams() -> None:
    kinds = {c.kind for c in conv.generate_conversations(1, "sft_train", 200)}
    assert kinds == set(KINDS)
    only = list(conv.generate_conversations(1, "mid_train", 20, mix={"recall": 1.0}))
    assert {c.kind for c in only} == {"recall"}
    train = [c.to_json() for c in conv.generate_conversations(1, "mid_train", 20)]
    val = [c.to_json() for c in conv.generate_conversations(1, "mid_val", 20)]
    assert not set(train) & set(val)
    with pytest.raises(ValueError, match="unknown conversation kinds"):
        list(conv.generate_conversations(1, "mid_train", 1, mix={"poems": 1.0}))
    with pytest.raises(ValueError, match="split must be one of"):
        list(conv.generate_conversations(1, "test", 1))
    with pytest.raises(ValueError, match="unknown conversation kind"):
        conv.make_conversation("poems", 0)


# ---------------------------------------------------------------------------------------------- files


def test_write_task_dir_is_deterministic_valid_and_atomic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    counts = conv.write_task_dir(a, seed=3, **SMALL)
    assert counts == {f"{s}.jsonl": n for s, n in SMALL.items()}
    conv.write_task_dir(b, seed=3, **SMALL)
    conv.write_task_dir(c, seed=4, **SMALL)
    assert sorted(p.name for p in a.iterdir()) == sorted(FILES)  # no .tmp left behind
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
        rows = _lines(a / name)
        assert len(rows) == counts[name] == conv.validate_jsonl(a / name)
        for messages in rows:
            nanochat_customjson_check(messages)


def test_rewrite_overwrites_our_files_and_leaves_others(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sft_val.jsonl").write_text("stale\n")
    lines: list[str] = []
    conv.write_task_dir(tmp_path, seed=0, **SMALL, progress=lines.append)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len(lines) == 4 and lines[3].startswith("overwrote ") and lines[0].startswith("wrote ")
    assert re.search(r"sft_val\.jsonl: 2 conversations, [\d,]+ bytes", lines[3])
    assert conv.validate_jsonl(tmp_path / "sft_val.jsonl") == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seed": -1}, "seed"), ({"mid_train": 0}, "mid_train"), ({"sft_val": True}, "sft_val")],
)
def test_write_task_dir_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conv.write_task_dir(tmp_path / "t", **{**SMALL, **kwargs})
    assert not (tmp_path / "t").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        conv.write_task_dir(tmp_path / "file", **SMALL)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("[oops", "not valid JSON"),
        ('{"role": "user", "content": "hi"}', "expected a JSON array"),
        ('[{"role": "user", "content": "hi"}]', "at least 2 messages"),
        ('[{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]', "message 0 has role"),
        ('[{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]', "should be 'user'"),
        ('[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]', "message 1 has role"),
        ('[{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]', "content must be a string"),
        ('[{"content": "a"}, {"role": "assistant", "content": "b"}]', "no 'role' field"),
        ('[{"role": "user"}, {"role": "assistant", "content": "b"}]', "no 'content' field"),
        ('["hi", "there"]', "must be an object"),
    ],
)
def test_validate_jsonl_names_the_line(tmp_path: Path, line: str, match: str) -> None:
    good = '[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]'
    path = tmp_path / "f.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")  # a blank line is skipped but still counted
    with pytest.raises(ValueError, match=rf"f\.jsonl:3: .*{re.escape(match)}"):
        conv.validate_jsonl(path)
    if match != "not valid JSON":
        with pytest.raises(AssertionError):
            nanochat_customjson_check(json.loads(line))  # the independent checker agrees
    path.write_text(f"{good}\n\n{good}\n")
    assert conv.validate_jsonl(path) == 2


# ---------------------------------------------------------------------------------------------- CLI


def test_megacontext_tasks_writes_four_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tasks", "--out", str(tmp_path / "t"), "--seed", "2", "--mid-train", "6", "--mid-val", "2",
            "--sft-train", "4", "--sft-val", "2", "--max-seq-len", "128"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(FILES)
    assert len(out) == 5 and all(line.startswith("wrote ") for line in out[:4])
    assert re.fullmatch(r"tasks: 14 conversations in 4 files, [\d,]+ bytes, in .* in \d+\.\d\d s", out[4])
    assert cli_main(argv) == 0
    assert all(line.startswith("overwrote ") for line in capsys.readouterr().out.splitlines()[:4])
    assert [conv.validate_jsonl(tmp_path / "t" / f) for f in FILES] == [6, 2, 4, 2]


class CharCodec:
    """A tokenizer of one token per character, as ``tokenizer.pkl`` (pickled; ``corpus.load_tokenizer`` reads it)."""

    def encode_ordinary(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def _cache_rows(cache: Path, dataset: tuple[str, str], split: str) -> list[dict]:
    import pyarrow.parquet as pq

    folder = cache / dataset[0].replace("/", "--") / dataset[1] / split
    assert json.loads((folder / "manifest.json").read_text()) == ["00000.parquet"]  # what load_hub_dataset lists
    return pq.read_table(folder / "00000.parquet").to_pylist()


def _fitting(seed: int, split: str, count: int, max_seq_len: int, tokens) -> list[list[dict]]:
    """The first ``count`` conversations of the pin's seeded stream that fit a row of ``max_seq_len + 1``."""
    from megacontext_plugin.data.hub_cache import rendered_tokens

    stream = conv.generate_conversations(seed, split, 50 * count, None, conv.Lengths(max_seq_len))
    return [list(c.messages) for c in stream if rendered_tokens(c.messages, tokens) <= max_seq_len + 1][:count]


def test_megacontext_tasks_for_master_writes_the_pins_conversations_that_fit_its_rows_into_its_dataset_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from megacontext_plugin.data import hub_cache

    counts = ["--mid-train", "6", "--mid-val", "2", "--sft-train", "4", "--sft-val", "2", "--max-seq-len", "128"]
    assert cli_main(["tasks", "--out", str(tmp_path / "base"), "--upstream", "master", "--seed", "2", *counts]) == 0
    out = capsys.readouterr().out
    assert "tasks: 10 training and 4 validation conversations in master's dataset cache" in out
    # master's best-fit loader never crops: a conversation longer than a row would clog its buffer for good
    assert re.search(r"mid_train: 6 conversations that fit a row of 129 tokens, \d+ longer ones left out", out)
    cache = tmp_path / "base" / "task_data"
    train = [r["messages"] for r in _cache_rows(cache, hub_cache.SMOLTALK, "train")]
    test = [r["messages"] for r in _cache_rows(cache, hub_cache.SMOLTALK, "test")]
    # master has no mid-training: its SFT set is the mid and SFT conversations, the pin's stream's very rows
    est = hub_cache.estimated_tokens
    assert train == _fitting(2, "mid_train", 6, 128, est) + _fitting(2, "sft_train", 4, 128, est)
    assert test == _fitting(2, "mid_val", 2, 128, est) + _fitting(2, "sft_val", 2, 128, est)
    assert all(hub_cache.rendered_tokens(m, est) <= 129 for m in train + test)
    # chat_sft slices its validation mixture eagerly: the placeholders hold the rows it indexes
    assert len(_cache_rows(cache, hub_cache.MMLU, "test")) == 5200
    assert len(_cache_rows(cache, hub_cache.GSM8K, "test")) == 420
    assert {"question", "choices", "answer", "subject"} <= set(_cache_rows(cache, hub_cache.MMLU, "auxiliary_train")[0])


def test_megacontext_tasks_for_master_counts_rows_with_the_runs_tokenizer(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from megacontext_plugin.data import hub_cache

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.pkl").write_bytes(pickle.dumps(CharCodec()))
    argv = ["tasks", "--out", str(tmp_path / "base"), "--upstream", "master", "--mid-train", "5", "--mid-val", "1",
            "--sft-train", "3", "--sft-val", "1", "--max-seq-len", "512", "--tokenizer", str(tmp_path / "tok")]
    assert cli_main(argv) == 0
    train = [r["messages"] for r in _cache_rows(tmp_path / "base" / "task_data", hub_cache.SMOLTALK, "train")]
    assert train == _fitting(0, "mid_train", 5, 512, len) + _fitting(0, "sft_train", 3, 512, len)
    # one token per character counts more tokens than the estimate: fewer conversations fit
    assert _fitting(0, "mid_train", 5, 512, len) != _fitting(0, "mid_train", 5, 512, hub_cache.estimated_tokens)
    assert "left out" in capsys.readouterr().out


def test_megacontext_tasks_refuses_what_master_cannot_hold_in_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from megacontext_plugin.data import hub_cache

    with pytest.raises(ValueError, match=r"mid_train: only 0 of 20 conversations fit master's rows of 257 tokens"):
        hub_cache.write_hub_cache(tmp_path / "a", counts={"mid_train": 1}, lengths=conv.Lengths(256),
                                  count_tokens=lambda text: 10**6)
    with pytest.raises(SystemExit) as e:
        cli_main(["tasks", "--out", str(tmp_path / "b"), "--tokenizer", str(tmp_path)])
    assert e.value.code == 2
    assert "--tokenizer: only with --upstream master" in capsys.readouterr().err
    assert cli_main(["tasks", "--out", str(tmp_path / "c"), "--upstream", "master", "--tokenizer",
                     str(tmp_path / "none")]) == 1
    assert "tokenizer.pkl not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--seed", "x"], "expected an integer"),
        (["--sft-val", "0"], "must be >= 1"),
        (["--max-seq-len", "32"], "must be >= 64"),
        (["--length-factor", "inf"], "finite number"),
        (["--max-seq-len", "64", "--length-factor", "2"], "must be >= 256 tokens"),
        (["--out", "FILE"], "not a directory"),
    ],
)
def test_bad_flags_exit_2_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    (tmp_path / "file").write_text("")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli_main(["tasks", "--out", str(tmp_path / "t"), *argv])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0]
    assert not (tmp_path / "t").exists()


def test_cli_subprocess_bad_count_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "megacontext_plugin.cli", "tasks", "--out", str(tmp_path / "t"), "--mid-train", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["megacontext tasks: error: argument --mid-train: must be >= 1, got -1"]
    assert not (tmp_path / "t").exists()
