"""Serving many conversations (CPU, tiny model): interleaved conversations each continue their own
session and answer as they do alone, abandoned sessions are dropped by the pool's rule, a long
ingestion logs its progress and stops at its time limit, and chat_web's named-session and limit rules."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from inference_support import FakeEngine, T, build, prompt

from megacontext_plugin.config import ConfigError, parse_config
from megacontext_plugin.inference import InferenceRuntime
from megacontext_plugin.inference.ingest_watch import IngestTimeout, IngestWatch
from megacontext_plugin.inference.pool import SessionPool
from megacontext_plugin.inference.session import INGEST_CHUNK
from megacontext_plugin.inference.web import (
    MEMORY_SHARE,
    auto_char_limit,
    binds_loopback,
    check_web_arguments,
    serves_web,
    web_char_limit,
)


def _answer(runtime: InferenceRuntime, engine: FakeEngine, tokens: list[int], max_tokens: int = 6) -> list[int]:
    stream = runtime.generate(engine, tokens, max_tokens=max_tokens, temperature=0.0)
    assert stream is not None
    return [column[0] for column, _ in stream]


def _conversation(runtime: InferenceRuntime, engine: FakeEngine, turns: list[list[int]]) -> list[list[int]]:
    """Answers to ``turns``, each sent with the whole conversation so far (as chat_web's clients do)."""
    sent: list[int] = []
    answers = []
    for turn in turns:
        sent = [*sent, *turn]
        answers.append(_answer(runtime, engine, sent))
        sent = [*sent, *answers[-1]]
    return answers


def test_interleaved_conversations_each_continue_their_own_session_and_answer_as_alone() -> None:
    model, controller, _ = build()
    engine = FakeEngine(model)
    clients = {c: [prompt(2 * T, seed=10 + c), prompt(9, seed=20 + c), prompt(7, seed=30 + c)] for c in range(3)}
    alone = {}
    for c, turns in clients.items():
        runtime = InferenceRuntime(controller.nets)
        alone[c] = _conversation(runtime, engine, turns)
        runtime.close()

    runtime = InferenceRuntime(controller.nets)  # --mc_max_sessions 4: room for all three
    sent: dict[int, list[int]] = {c: [] for c in clients}
    answers: dict[int, list[list[int]]] = {c: [] for c in clients}
    for turn in range(3):  # turn by turn, every client in between the others
        for c, turns in clients.items():
            sent[c] = [*sent[c], *turns[turn]]
            answers[c].append(_answer(runtime, engine, sent[c]))
            sent[c] = [*sent[c], *answers[c][-1]]
    assert answers == alone
    sessions = runtime.unnamed
    assert len(sessions) == 3 and all(s.num_tokens == len(sent[c]) for c, s in enumerate(sessions))
    assert [s.stats.tokens_ingested for s in sessions] == [len(sent[c]) - 3 * 6 for c in clients]  # once each
    runtime.close()
    controller.close()


def test_abandoned_sessions_are_dropped_least_recently_used_first_and_their_trees_removed(tmp_path: Path) -> None:
    model, controller, _ = build(["--mc_tree", "disk", "--mc_tree_dir", str(tmp_path), "--mc_max_sessions", "2"])
    runtime = InferenceRuntime(controller.nets)
    engine = FakeEngine(model)
    first = prompt(2 * T, seed=1)
    kept = [*first, *_answer(runtime, engine, first)]
    for seed in range(2, 7):  # five abandoned conversations
        _answer(runtime, engine, prompt(2 * T, seed=seed))
        turn = [*kept, 9]  # the first client keeps talking: never the least recently used
        kept = [*turn, *_answer(runtime, engine, turn)]
    assert len(runtime.unnamed) == 2 and runtime.pool.dropped == 4
    assert len(list(tmp_path.glob("unnamed-*"))) == 2  # a dropped session's tree is deleted
    assert runtime.unnamed[-1].history(0, len(first)).tolist() == first
    runtime.close()
    assert not list(tmp_path.glob("unnamed-*"))
    controller.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Stub:
    def __init__(self, model: object) -> None:
        self.model, self.closed = model, False

    def new_tokens(self, tokens: list[int]) -> list[int] | None:
        return None


def test_the_pool_drops_idle_sessions_at_the_next_prompt_and_keeps_one_prompts_rows_together() -> None:
    clock, dropped = _Clock(), []
    pool = SessionPool(2, idle_s=60.0, drop=dropped.append, clock=clock)
    a, b = _Stub(None), _Stub(None)
    pool.add([a])  # type: ignore[list-item]
    clock.now = 30.0
    pool.add([b])  # type: ignore[list-item]
    clock.now = 61.0
    pool.expire()
    assert dropped == [a] and list(pool) == [b]
    rows = [_Stub(None) for _ in range(3)]
    pool.add(rows)  # type: ignore[arg-type]
    assert list(pool) == rows and dropped == [a, b]  # three rows of one prompt stay, over the cap
    forever = SessionPool(1, idle_s=0.0, drop=dropped.append, clock=clock)
    forever.add([a])  # type: ignore[list-item]
    clock.now = 1e9
    forever.expire()
    assert list(forever) == [a]


def test_ingest_watch_logs_progress_and_stops_at_its_limit() -> None:
    clock, lines = _Clock(), []
    watch = IngestWatch(10_000, limit_s=20.0, log=lines.append, every_s=5.0, clock=clock)
    clock.now = 2.0
    watch(2_000)
    assert lines == []  # a short ingestion says nothing
    clock.now = 6.0
    watch(4_000)
    assert lines == ["ingesting a 10,000-token conversation: 4,000 tokens (40%) in 6.0 s, about 9 s left"]
    clock.now = 21.0
    with pytest.raises(IngestTimeout, match=r"at 20 s \(--mc_web_ingest_s\) with 6,000 tokens \(60%\)"):
        watch(6_000)
    watch(10_000)  # the last chunk is never refused
    watch.finished()
    assert lines[-1] == "ingested a 10,000-token conversation in 21.0 s"


def test_a_server_runtime_stops_a_long_ingestion_at_its_limit_and_the_resent_conversation_continues() -> None:
    model, controller, _ = build()
    engine = FakeEngine(model)
    long_prompt = prompt(3 * INGEST_CHUNK + 100, seed=4)
    alone = InferenceRuntime(controller.nets)
    expected = _answer(alone, engine, long_prompt)
    alone.close()

    runtime = InferenceRuntime(controller.nets)
    lines: list[str] = []
    runtime.log, runtime.ingest_limit_s, runtime.progress_every_s = lines.append, 1e-9, 0.0
    assert _answer(runtime, engine, long_prompt) == []  # stopped after its first chunk: no answer
    assert "stopped ingesting a 6,244-token conversation" in lines[-1]
    assert lines[-1].endswith("sending the conversation again continues from there")
    session = runtime.last_session
    assert session is not None and session.num_tokens == INGEST_CHUNK
    for ingested in (2, 3):
        assert _answer(runtime, engine, long_prompt) == []
        assert runtime.last_session is session and session.num_tokens == ingested * INGEST_CHUNK
    runtime.ingest_limit_s = 0.0
    lines.clear()
    answer = _answer(runtime, engine, long_prompt)
    assert runtime.last_session is session and session.num_tokens == len(long_prompt) + len(answer)
    assert lines and lines[0].startswith("ingesting a 100-token conversation: 100 tokens (100%)")
    assert answer == expected  # the same history, laid out afresh: what the conversation gets in one go
    runtime.close()
    controller.close()


def _web_args(*argv: str) -> tuple[argparse.Namespace, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-gpus", type=int, default=1)
    known, rest = parser.parse_known_args(list(argv))
    return known, parse_config(["--mc", *rest])


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("myhost", False)])
def test_binds_loopback_only_for_loopback_addresses(host: str, loopback: bool) -> None:
    assert binds_loopback(host) is loopback


def test_chat_web_refuses_a_named_session_beyond_loopback_unless_told_every_client_shares_it() -> None:
    args, cfg = _web_args("--mc_session", "notes")
    assert serves_web(args) and not serves_web(argparse.Namespace(temperature=0.6))
    with pytest.raises(ConfigError, match=r"--mc_session notes: chat_web on --host 0\.0\.0\.0 would give every client"):
        check_web_arguments(cfg, args)  # type: ignore[arg-type]
    for argv in (["--host", "127.0.0.1", "--mc_session", "notes"],
                 ["--mc_session", "notes", "--mc_session_shared_by_all_clients"], []):
        args, cfg = _web_args(*argv)
        check_web_arguments(cfg, args)  # type: ignore[arg-type]
    args, cfg = _web_args("--num-gpus", "2")
    with pytest.raises(ConfigError, match="serves from one worker"):
        check_web_arguments(cfg, args)  # type: ignore[arg-type]


def test_the_default_conversation_limit_is_what_the_held_sessions_can_hold() -> None:
    ram = parse_config(["--mc", "--block_size", "32", "--mc_max_sessions", "4"])
    gib = 2**30
    limit = auto_char_limit(ram, 1280, 64 * gib, None)
    per_token = 4 + 4 * 1280 / 31
    assert limit == int(MEMORY_SHARE * 64 * gib / (2 * 4 * per_token + 160))
    assert auto_char_limit(ram, 1280, 128 * gib, None) > limit  # more memory holds more
    assert auto_char_limit(parse_config(["--mc", "--mc_max_sessions", "8"]), 1280, 64 * gib, None) < limit
    disk = parse_config(["--mc", "--mc_tree", "disk", "--mc_max_sessions", "4"])
    assert auto_char_limit(disk, 1280, 64 * gib, 1 * gib) < auto_char_limit(disk, 1280, 64 * gib, 100 * gib)
    assert web_char_limit(parse_config(["--mc", "--mc_web_max_chars", "5000"]), 64, 32_000) == (
        5000, "--mc_web_max_chars")
    tiny_memory = web_char_limit(ram, 10**9, 32_000)  # an absurdly wide model: never below upstream's
    assert tiny_memory[0] == 32_000


def test_unnamed_trees_a_killed_process_left_are_removed_unless_another_process_holds_them(tmp_path: Path) -> None:
    import torch

    from megacontext_plugin.tree import open_tree

    def tree(name: str):  # type: ignore[no-untyped-def]
        return open_tree("disk", block_size=8, dim=4, embed_fn=lambda ids: torch.zeros(len(ids), 4),
                         gist_fn=lambda children: children.mean(dim=1), path=tmp_path / name, fsync="never")

    tree("unnamed-left").close()  # its process was killed: nobody holds it
    held = tree("unnamed-held")  # another server's live session
    tree("notes").close()  # a named session is never swept
    model, controller, _ = build(["--mc_tree", "disk", "--mc_tree_dir", str(tmp_path)])
    runtime = InferenceRuntime(controller.nets)
    _answer(runtime, FakeEngine(model), prompt(2 * T))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "unnamed-left" not in names and {"unnamed-held", "notes"} <= set(names) and len(names) == 3
    runtime.close()
    held.close()
    controller.close()
