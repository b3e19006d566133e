"""The chat arm's conversations, scoring, truncation and flags (no nanochat needed); the arm end to end on
a tiny nanochat SFT run is in ``test_eval_nanochat.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from megacontext_plugin.config import MCConfig, parse_config
from megacontext_plugin.data import conversations as convs
from megacontext_plugin.evaluation import add_long_context_parser
from megacontext_plugin.evaluation.chat_conversations import (
    KINDS,
    MIN_FILLER_TOKENS,
    ChatTokens,
    fact_found,
    fact_span,
    make_conversations,
    prompt_ids,
    prompt_tokens,
)
from megacontext_plugin.evaluation.chat_engine import chat_cli_flags, truncated


def _bytes(text: str) -> list[int]:
    return [b + 10 for b in text.encode("utf-8")]  # ids 0-9 stay free for the special tokens


def _count(text: str) -> int:
    return len(_bytes(text))


CHAT = ChatTokens(bos=0, user_start=1, user_end=2, assistant_start=3, assistant_end=4)


def test_same_seed_same_conversations_and_another_seed_others() -> None:
    first = make_conversations(7, 600, 6, _count, 1.0)
    assert make_conversations(7, 600, 6, _count, 1.0) == first
    other = make_conversations(8, 600, 6, _count, 1.0)
    assert [c.messages for c in other] != [c.messages for c in first]
    assert [c.kind for c in first] == [*KINDS, *KINDS]


@pytest.mark.parametrize("target", [256, 1024, 4096])
def test_a_conversation_lands_near_its_length_in_tokens(target: int) -> None:
    for c in make_conversations(3, target, 9, _count, 1.0):
        n = len(prompt_ids(c.messages, _bytes, CHAT))
        assert n == c.num_tokens == prompt_tokens(c.messages, _count)
        assert n > target - MIN_FILLER_TOKENS
        if len(c.messages) > 3:  # with filler (without, the plant and question alone may outgrow a small target)
            assert n <= target + 40


def test_a_misjudged_characters_per_token_still_lands_near_the_target() -> None:
    for c in make_conversations(3, 2048, 6, _count, 1.3):  # sized as if tokens were 30% longer than they are
        assert abs(c.num_tokens - 2048) <= 0.05 * 2048


def test_the_first_user_turn_plants_the_fact_and_the_last_asks_for_it() -> None:
    questions = {"passkey": convs.PASSKEY_QUESTION, "name": convs.FACT_QUESTION.split("{")[0],
                 "number": convs.RECALL_QUESTION.split("{")[0]}
    for c in make_conversations(11, 800, 9, _count, 1.0):
        roles = [m["role"] for m in c.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert fact_found(c.messages[0]["content"], c.fact) and fact_found(c.reference, c.fact)
        assert not any(fact_found(m["content"], c.fact) for m in c.messages[1:])  # only the first turn holds it
        assert c.messages[-1]["content"].startswith(questions[c.kind]) and len(c.messages) > 3


def test_the_fact_counts_only_as_a_whole_word() -> None:
    assert fact_found("The pass key is 48213.", "48213") and fact_found("Your dog is called kel.", "kel")
    assert not fact_found("The pass key is 148213.", "48213") and not fact_found("a kelp", "kel")
    assert not fact_found("The pass key is 4821.", "48213")


def test_the_fact_span_points_at_the_facts_tokens_in_the_prompt() -> None:
    for c in make_conversations(4, 600, 9, _count, 1.0):  # one byte per token: the span is exact
        lo, hi = fact_span(c.messages, c.fact, _bytes)
        assert bytes(b - 10 for b in prompt_ids(c.messages, _bytes, CHAT)[lo:hi]).decode() == c.fact

    def words(text: str) -> list[int]:  # a coarser tokenizer that glues a space to the word after it
        return [sum(map(ord, w)) + 10 for w in text.replace(" ", "\0 ").split("\0") if w]

    plant = ({"role": "user", "content": "Remember this. My dog is called kel."},)
    lo, hi = fact_span(plant, "kel", words)
    ids = prompt_ids(plant, words, CHAT)
    assert (lo, hi) == (8, 9) and ids[lo] == words(" kel.")[0]  # " kel." is the fact's token, the space in it
    with pytest.raises(ValueError, match="does not hold the fact"):
        fact_span(plant, "dub", words)


def test_prompt_ids_render_as_chat_cli_does() -> None:
    messages = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "q"})
    assert prompt_ids(messages, _bytes, CHAT) == [0, 1, *_bytes("hi"), 2, 3, *_bytes("yo"), 4, 1, *_bytes("q"), 2, 3]


def test_truncation_keeps_bos_and_the_last_tokens_with_their_role() -> None:
    ids = [0, 1, 50, 51, 52, 2, 3, 60, 61, 4, 1, 70, 2, 3]
    assert truncated(ids, 14, CHAT) == ids  # fits: unchanged
    assert truncated(ids, 7, CHAT) == [0, 3, 4, 1, 70, 2, 3]  # inside the assistant message: its role token first
    assert truncated(ids, 9, CHAT) == [0, 3, 60, 61, 4, 1, 70, 2, 3]  # on a start token: kept as it is
    assert truncated(ids, 6, CHAT) == [0, 1, 70, 2, 3]  # on the assistant's end token: dropped
    assert truncated(ids, 12, CHAT) == [0, 1, 52, 2, 3, 60, 61, 4, 1, 70, 2, 3]  # inside a user message


def test_chat_cli_flags_reproduce_the_run_knobs_at_the_budget() -> None:
    trained = MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=16, lensnet_dim=64,
                       allocator_expand_threshold=0.1, mc_telemetry="jsonl")
    flags = chat_cli_flags(trained, 64, {"allocator_iterations": 3})
    cfg = parse_config(flags)
    assert cfg == MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=16, lensnet_dim=64,
                           allocator_expand_threshold=0.1, allocator_iterations=3, mc_wc_budget=64,
                           mc_telemetry="none")


def _parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="megacontext eval")
    add_long_context_parser(root.add_subparsers(dest="eval_command", required=True))
    return root.parse_args(["long-context", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--chat-docs", "4"], "--chat-docs, --chat-flags: only with --chat"),
    (["--chat", "--chat-flags", "--mc_nope 3"], "--chat-flags: unrecognized arguments: --mc_nope 3"),
    (["--chat", "--chat-flags=--mc_refocus_every -1"], "--chat-flags: argument --mc_refocus_every"),
    (["--chat", "--chat-flags=--mc_wc_budget 32"], "--chat-flags --mc_wc_budget: set by the evaluation"),
    (["--chat", "--samples", "3"], "--samples: not used by --chat"),
    (["--chat", "--arms", "uniform"], "--arms uniform: with --chat the arms are truncation,mc,full"),
    (["--chat", "--chat-docs", "0"], "--chat-docs 0: at least 1"),
    (["--chat", "--lengths", "2,x"], "--lengths"),
])
def test_a_bad_chat_flag_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--checkpoint", str(tmp_path), *argv)
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("where", ["file", "base"])
def test_chat_refuses_a_tiny_checkpoint_file_and_a_base_checkpoint(tmp_path: Path, where: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiny.pt"
    if where == "file":
        path.write_bytes(b"")
    else:
        path = tmp_path / "base_checkpoints" / "d2"
        path.mkdir(parents=True)
    args = _parse("--checkpoint", str(path), "--chat")
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2
    assert ("a file; --chat needs a nanochat chat checkpoint directory" in line if where == "file"
            else "a base checkpoint has not learnt nanochat's chat format" in line)
