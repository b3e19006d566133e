"""Inference with MegaContext (CPU, tiny model): prompts far past the window, KV reuse equal to a full
recompute, LensNet refocusing, determinism, sessions that survive SIGKILL, the level map, telemetry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_support import (
    VOCAB,
    FakeEngine,
    FakeTokenizer,
    T,
    build,
    full_recompute_logits,
    prompt,
    record_lens_levels,
    sharpen_lensnet,
)

from megacontext_plugin.config import ConfigError
from megacontext_plugin.context import WorkingContext
from megacontext_plugin.focus import PROMPT_ROUNDS, CooldownTracker, start_layout
from megacontext_plugin.inference import (
    InferenceRuntime,
    MCSession,
    SessionError,
    SessionSettings,
    SpecialTokens,
    decode_stream,
    ending_at_role_tokens,
    level_map,
    make_room,
    render_level_map,
    sample_next_token,
    wants_megacontext,
)
from megacontext_plugin.inference.refocus import Refocuser
from megacontext_plugin.telemetry.events import INFERENCE_UPDATE, TelemetryEvent, validate_event

SUPPORT = Path(__file__).with_name("inference_support.py")


@pytest.fixture
def tiny() -> Iterator[tuple]:
    model, controller, cfg = build()
    yield model, controller, cfg
    controller.close()


def _session(model, controller, cfg, **kwargs) -> MCSession:
    settings = SessionSettings.from_config(cfg, T, max_level=controller.lensnet.max_level)
    return MCSession(model, controller.gistnet, controller.lensnet, settings, **kwargs)


def _drain(stream) -> list[int]:
    return [column[0] for column, _ in stream]


def test_a_prompt_ten_windows_long_decodes_and_the_tree_holds_every_token(tiny) -> None:
    model, controller, _ = tiny
    runtime = InferenceRuntime(controller.nets)
    seen: list[dict] = []
    runtime.listeners.append(seen.append)
    tokens = prompt(10 * T)
    stream = runtime.generate(FakeEngine(model), tokens, max_tokens=40, temperature=0.0)
    assert stream is not None
    out = _drain(stream)
    session = runtime.last_session
    assert len(out) == 40 and all(0 <= t < VOCAB for t in out)
    assert session.num_tokens == len(tokens) + 40
    assert session.history().tolist() == tokens + out  # every token, in order
    assert session.wc.num_tokens == session.num_tokens and len(session.wc) <= runtime.budget
    session.wc.validate(recent_tokens=session.settings.protected, budget=runtime.budget)
    stats = session.stats
    assert stats.lens_calls >= PROMPT_ROUNDS + 40 // 8  # after the prompt, then every --mc_refocus_every tokens
    assert len(session.wc) < session.num_tokens // 4  # ten windows in a fraction of one: the history is tiled
    assert stats.entries_reused > stats.entries_forwarded  # the KV cache was reused, not recomputed
    assert seen and seen == list(session.events) and all(e["refocused"] for e in seen)
    runtime.close()


def test_the_kv_cache_path_gives_the_logits_of_a_full_recompute(tiny) -> None:
    model, controller, cfg = tiny
    sharpen_lensnet(controller)
    session = _session(model, controller, cfg)
    logits = session.ingest(prompt(6 * T))
    recomputed = []
    for _ in range(40):
        assert torch.allclose(logits, full_recompute_logits(session), atol=2e-5, rtol=0)
        before = session.stats.entries_forwarded
        logits = session.step(int(logits.argmax()))
        recomputed.append(session.stats.entries_forwarded - before)
        assert len(session.wc) <= session.settings.budget
    assert torch.allclose(logits, full_recompute_logits(session), atol=2e-5, rtol=0)
    stats = session.stats
    assert stats.expands > 0 and stats.collapses + stats.forced_collapses > 0  # LensNet's edits happened
    assert min(recomputed) == 1  # a plain decode step forwards one entry
    assert max(recomputed) > 1  # a refocus recomputes from its first changed entry
    record = session.refocus_log[-1]
    assert 0 <= record.first_changed <= record.length_after


@pytest.mark.parametrize("extra", [["--mc_position_scheme", "span_center_scaled"], ["--mc_rope_gist_sigma", "0.3"]])
def test_the_kv_path_matches_a_full_recompute_under_other_position_schemes(extra) -> None:
    model, controller, cfg = build(extra)
    try:
        session = _session(model, controller, cfg)
        logits = session.ingest(prompt(4 * T))
        for _ in range(12):
            logits = session.step(int(logits.argmax()))
            assert torch.allclose(logits, full_recompute_logits(session), atol=2e-5, rtol=0)
    finally:
        controller.close()


def test_raw_entries_get_their_token_as_value_id_and_gists_none(tiny) -> None:
    model, controller, cfg = tiny
    session = _session(model, controller, cfg)
    tokens = prompt(3 * T)
    session.ingest(tokens)
    wc, W = session.wc, len(session.wc)
    vid = session.entries.vid_C[:W].numpy()
    raw = wc.levels == 0
    assert (vid[~raw] == -1).all() and raw.any() and (~raw).any()
    assert (vid[raw] == np.asarray(tokens)[wc.indices[raw]]).all()


def test_greedy_decoding_is_deterministic_and_sampling_follows_the_seed() -> None:
    runs = []
    for temperature, seed in ((0.0, 1), (0.0, 2), (1.0, 5), (1.0, 5)):
        model, controller, _ = build()
        runtime = InferenceRuntime(controller.nets)
        runs.append(_drain(runtime.generate(FakeEngine(model), prompt(4 * T), max_tokens=16,
                                            temperature=temperature, top_k=8, seed=seed)))
        runtime.close()
        controller.close()
    assert runs[0] == runs[1]  # greedy ignores the seed
    assert runs[2] == runs[3] and runs[2] != runs[0]  # sampling: the seed decides


def test_sampling_matches_nanochats_rules() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample_next_token(logits, None, 0.0).item() == 1
    rng = torch.Generator().manual_seed(0)
    draws = {sample_next_token(logits, rng, 1.0, top_k=2).item() for _ in range(50)}
    assert draws == {1, 3}  # only the top 2 ever
    with pytest.raises(ValueError):
        sample_next_token(logits, rng, -1.0)


def test_a_continued_conversation_ingests_only_the_new_turn_and_another_prompt_starts_fresh(tiny) -> None:
    model, controller, _ = tiny
    runtime = InferenceRuntime(controller.nets)
    engine = FakeEngine(model)
    first = prompt(3 * T)
    answer = _drain(runtime.generate(engine, first, max_tokens=10, temperature=0.0))
    session = runtime.last_session
    turn = [*first, *answer, 9, 10, 11]  # the caller resends the conversation with its next turn
    second = _drain(runtime.generate(engine, turn, max_tokens=5, temperature=0.0))
    assert runtime.last_session is session and session.stats.tokens_ingested == len(first) + 3
    _drain(runtime.generate(engine, prompt(3 * T, seed=9), max_tokens=5, temperature=0.0))
    other = runtime.last_session
    assert other is not session and other.stats.tokens_ingested == 3 * T  # evals never share a history
    _drain(runtime.generate(engine, [*turn, *second, 12, 13], max_tokens=5, temperature=0.0))
    assert runtime.last_session is session and not session.closed  # kept: the first conversation continues
    assert session.stats.tokens_ingested == len(first) + 3 + 2
    runtime.close()


def test_short_prompts_go_to_upstreams_decode(tiny) -> None:
    model, controller, _ = tiny
    runtime = InferenceRuntime(controller.nets)
    assert wants_megacontext(T - 8, 8, T, named=False) is False
    engine = _ReenteringEngine(model, runtime)
    assert list(runtime.generate(engine, prompt(T - 8), max_tokens=8)) == [([7], [1])] * 8  # fits: upstream's path
    assert engine.upstream_calls == 1 and runtime.last_session is None
    assert len(list(runtime.generate(engine, prompt(T - 8), max_tokens=9, temperature=0.0))) == 9  # MegaContext's
    assert engine.upstream_calls == 1 and runtime.last_session is not None
    runtime.close()


class _ReenteringEngine(FakeEngine):
    """``Engine.generate`` as the patch makes it: the hook (``runtime.generate``) first, else upstream's decode."""

    def __init__(self, model: torch.nn.Module, runtime: InferenceRuntime) -> None:
        super().__init__(model)
        self.runtime, self.upstream_calls = runtime, 0

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42):
        stream = self.runtime.generate(self, tokens, num_samples, max_tokens, temperature, top_k, seed)
        if stream is not None:
            yield from stream
            return
        self.upstream_calls += 1
        for _ in range(max_tokens or 1):
            yield [7] * num_samples, [1] * num_samples


def test_upstreams_decode_ends_each_row_at_a_role_token() -> None:
    s = FakeTokenizer.SPECIALS
    specials = SpecialTokens.from_tokenizer(FakeTokenizer())
    end = s["<|assistant_end|>"]
    upstream = [([7, 7], [1, 1]), ([s["<|assistant_start|>"], 8], [1, 1]), ([9, 8], [1, 1]),
                ([9, s["<|user_start|>"]], [1, 1]), ([9, 9], [1, 1])]
    assert list(ending_at_role_tokens(iter(upstream), specials)) == [
        ([7, 7], [1, 1]), ([end, 8], [0, 1]), ([9, 8], [1, 1]), ([9, end], [1, 0])]  # each row's own end


def test_several_samples_decode_in_lockstep_and_a_named_session_refuses_them(tiny, tmp_path: Path) -> None:
    model, controller, _ = tiny
    runtime = InferenceRuntime(controller.nets)
    columns = list(runtime.generate(FakeEngine(model), prompt(4 * T), num_samples=3, max_tokens=12,
                                    temperature=1.0, seed=3))
    assert len(columns) == 12 and all(len(c) == 3 and m == [1, 1, 1] for c, m in columns)
    rows = list(zip(*(c for c, _ in columns), strict=True))
    assert len(set(rows)) > 1  # every row its own sample and its own layout
    assert [s.num_tokens for s in runtime.unnamed] == [4 * T + 12] * 3
    runtime.close()
    _, named_controller, _ = build(["--mc_session", "notes"])
    named = InferenceRuntime(named_controller.nets)
    with pytest.raises(SessionError, match="one sample at a time"):
        named.generate(FakeEngine(model), prompt(4 * T), num_samples=2, max_tokens=4)
    named.close()
    named_controller.close()


class _Scripted:
    """A stand-in session whose next token is scripted (one-hot logits)."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.i, self.accepted, self.closed = script, 0, [], False

    def _logits(self) -> torch.Tensor:
        out = torch.full((2000,), -1e9)
        out[self.script[min(self.i, len(self.script) - 1)]] = 0.0
        return out

    def accept(self, token: int) -> None:
        self.accepted.append(token)

    def advance(self) -> torch.Tensor:
        self.i += 1
        return self._logits()

    def flush(self) -> None:
        pass


def test_the_stream_runs_the_calculator_and_stops_like_upstream() -> None:
    tok = FakeTokenizer()
    s = tok.SPECIALS
    specials = SpecialTokens.from_tokenizer(tok)
    script = [12, s["<|python_start|>"], 10, 20, 11, s["<|python_end|>"], 13, 13, 13, 13, s["<|assistant_end|>"], 15]
    row = _Scripted(script)
    calls: list[str] = []

    def calculator(expr: str) -> object:
        calls.append(expr)
        return eval(expr)  # the test's own arithmetic

    stream = decode_stream([row], lambda: [row._logits()], None, 0.0, None, 0, specials, tok, calculator,
                           torch.device("cpu"))
    columns = list(stream)
    tokens = [c[0] for c, _ in columns]
    masks = [m[0] for _, m in columns]
    assert calls == ["2+3"]
    forced = [s["<|output_start|>"], 13, s["<|output_end|>"]]  # "5", forced in after <|python_end|>
    assert tokens[:9] == [12, s["<|python_start|>"], 10, 20, 11, s["<|python_end|>"], *forced]
    assert masks[6:9] == [0, 0, 0] and masks[:6] == [1] * 6
    assert tokens[-1] == s["<|assistant_end|>"]  # the row completed: the stream ended there
    assert row.accepted == tokens  # every yielded token went into the history first


@pytest.mark.parametrize("role", ["<|user_end|>", "<|user_start|>", "<|assistant_start|>"])
def test_a_role_token_in_an_answer_ends_it_as_assistant_end(role: str) -> None:
    tok = FakeTokenizer()
    s = tok.SPECIALS
    row = _Scripted([12, 13, s[role], 14, 15])  # the model leaves its turn after two tokens
    stream = decode_stream([row], lambda: [row._logits()], None, 0.0, None, 0, SpecialTokens.from_tokenizer(tok),
                           tok, None, torch.device("cpu"))
    columns = list(stream)
    assert [c[0] for c, _ in columns] == [12, 13, s["<|assistant_end|>"]]  # no client sees the role token
    assert [m[0] for _, m in columns] == [1, 1, 0]  # the end is forced, not what was sampled
    assert row.accepted == [12, 13, s["<|assistant_end|>"]]  # the history holds a closed turn


def test_make_room_collapses_what_lensnet_calls_cheap_then_the_oldest() -> None:
    K = 4
    wc = WorkingContext.raw(64, K)
    u = np.zeros(64, dtype=np.float32)
    u[32:36] = -0.9  # LensNet: cheap
    u[0:4] = 0.9  # LensNet: keep
    out, u_out, levels, indices = make_room(wc, u, target=58, recent_tokens=8, max_level=4)
    assert len(out) <= 58 and len(u_out) == len(out)
    assert sorted(indices.tolist()) == [1, 8]  # tokens 32..35 first, then the oldest without opinion (4..7)
    assert (levels == 1).all()
    cooled = CooldownTracker(2)
    cooled.record(np.array([1]), np.array([8]), 0)
    *_, indices2 = make_room(wc, u, target=61, recent_tokens=8, max_level=4, cooldown=cooled, now=1)
    assert indices2.tolist() == [1]  # the group in cooldown waits behind every other
    _, _, _, answer_first = make_room(wc, np.zeros(64, np.float32), target=58, recent_tokens=8, max_level=4,
                                      prefer_from=40)
    assert sorted(answer_first.tolist()) == [10, 11]  # while answering: the answer's groups behind the tail
    with pytest.raises(SessionError, match="cannot fit"):
        make_room(WorkingContext.raw(16, K), np.zeros(16, np.float32), target=4, recent_tokens=12, max_level=4)


def test_make_room_prefers_parents_at_levels_lensnet_trained_on() -> None:
    K = 4
    # tokens 0..63 as four level-2 gists, 64..95 as eight level-1 gists, 96..111 raw
    wc = WorkingContext([2] * 4 + [1] * 8 + [0] * 16, [0, 1, 2, 3, *range(16, 24), *range(96, 112)], K, 112)
    u = np.zeros(len(wc), dtype=np.float32)
    u[0:4] = -0.9  # LensNet calls the level-2 group cheapest: folding it makes a level-3 parent
    _, _, levels, _ = make_room(wc, u, target=len(wc) - 3, recent_tokens=8, max_level=4)
    assert levels.tolist() == [3]
    _, _, levels, _ = make_room(wc, u, target=len(wc) - 3, recent_tokens=8, max_level=4, lens_level=2)
    assert levels.tolist() == [2]  # a level-2 parent LensNet knows, though its opinion ranks it behind
    out, _, levels, _ = make_room(wc, u, target=len(wc) - 9, recent_tokens=16, max_level=4, lens_level=2)
    assert sorted(levels.tolist()) == [2, 2, 3] and len(out) <= len(wc) - 9  # level 3 once level 2 is spent


def test_the_level_map_shows_raw_spans_and_gists_without_token_ids() -> None:
    wc = WorkingContext.recency(4096, 100, 8, recent_tokens=16)
    m = level_map(wc, budget=100, width=32)
    assert json.loads(json.dumps(m)) == m
    assert sum(r["entries"] for r in m["runs"]) == len(wc) == m["entries"]
    assert m["runs"][0]["start"] == 0 and m["runs"][-1]["end"] == 4096 and m["runs"][-1]["level"] == 0
    assert sum(m["tokens_per_level"]) == 4096 and len(m["bar"]) == 32 and m["bar"].endswith(".")
    text = render_level_map(wc, budget=100)
    assert text.startswith("4096 tokens in") and "L0:" in text and text.splitlines()[1].startswith("[")


def test_every_refocus_emits_an_inference_update_in_the_telemetry_schema(tiny) -> None:
    model, controller, cfg = tiny
    session = _session(model, controller, cfg)
    logits = session.ingest(prompt(3 * T))
    for _ in range(17):
        logits = session.step(int(logits.argmax()))
    assert len(session.events) == session.stats.refocuses == PROMPT_ROUNDS + 2  # the prompt's, then every 8 tokens
    for payload in session.events:
        validate_event(TelemetryEvent(INFERENCE_UPDATE, payload))
    assert session.events[-1]["tokens_generated"] == 16 and session.events[-1]["refocus_interval"] == 8


def test_a_prompt_refocuses_from_the_coarsest_layout_as_training_and_the_evaluation_do(tiny, monkeypatch) -> None:
    """LensNet gets the whole budget to open what the prompt needs: the first refocus after a prompt starts
    from ``focus.start_layout`` of the whole history, not from the recency layout the budget leaves no room in."""
    model, controller, cfg = tiny
    session = _session(model, controller, cfg)
    starts: list[WorkingContext] = []
    refocus = Refocuser.refocus
    monkeypatch.setattr(Refocuser, "refocus", lambda self, wc, *a, **k: starts.append(wc) or refocus(self, wc, *a, **k))
    s = session.settings
    session.ingest(prompt(3 * T))
    assert starts[0] == start_layout(3 * T, s.block_size, s.protected) and len(starts) == PROMPT_ROUNDS
    logits = session.ingest(prompt(T // 2))  # the next prompt of the same history starts over from its coarsest
    assert starts[PROMPT_ROUNDS] == start_layout(3 * T + T // 2, s.block_size, s.protected)
    assert logits.shape == (VOCAB,)


def test_a_long_prompt_starts_with_a_shorter_tail_where_the_budget_leaves_no_room(monkeypatch) -> None:
    """At budget 56 a history of 8 windows keeps its protected 16 tokens only at the cost of all the room
    to open anything; its start protects 8 (``focus.fitted_tail``), the allocator edits the rest, and decoding
    goes on; a shorter history keeps all 16."""
    model, controller, cfg = build(["--mc_wc_budget", "56"])
    try:
        session = _session(model, controller, cfg)
        s = session.settings
        starts: list[WorkingContext] = []
        refocus = Refocuser.refocus
        monkeypatch.setattr(Refocuser, "refocus",
                            lambda self, wc, *a, **k: starts.append(wc) or refocus(self, wc, *a, **k))
        session.ingest(prompt(4 * T))
        assert starts[0] == start_layout(4 * T, s.block_size, s.protected)
        n = 8 * T
        logits = session.ingest(prompt(n - 4 * T, seed=2))
        start = starts[PROMPT_ROUNDS]
        assert start == start_layout(n, s.block_size, 8) and start.levels[start.ends > n - s.protected].any()
        for _ in range(2 * s.refocus_every):
            logits = session.step(int(logits.argmax()))
        assert session.wc is not None and session.wc.num_tokens == n + 2 * s.refocus_every
        assert len(session.wc) <= s.budget
    finally:
        controller.close()


def test_a_prompt_that_fits_raw_with_headroom_for_the_answer_stays_raw(tiny) -> None:
    model, controller, cfg = tiny
    session = _session(model, controller, cfg)
    n = session.settings.budget - session.settings.headroom
    session.ingest(prompt(n))
    assert len(session.wc) == n and not session.wc.levels.any()


def test_inference_settings_reject_a_budget_without_room() -> None:
    _, controller, cfg = build(["--mc_wc_budget", "64", "--allocator_recent_tokens", "16", "--mc_wc_headroom", "40"])
    with pytest.raises(ConfigError, match="--mc_wc_headroom"):
        SessionSettings.from_config(cfg, T)
    controller.close()


@pytest.mark.parametrize(("budget", "flag", "every", "headroom"), [
    (64, None, 8, 8), (67, None, 8, 8), (256, None, 32, 32), (2048, None, 32, 256), (64, "16", 16, 16)])
def test_the_refocus_interval_defaults_to_an_eighth_of_the_budget_up_to_32(budget: int, flag: str | None,
                                                                          every: int, headroom: int) -> None:
    from megacontext_plugin.config import parse_config

    argv = ["--mc", "--block_size", "8", "--allocator_recent_tokens", "16", "--mc_horizon", "16",
            "--mc_wc_budget", str(budget), *(["--mc_refocus_every", flag] if flag else [])]
    settings = SessionSettings.from_config(parse_config(argv), 2048)
    assert (settings.refocus_every, settings.headroom) == (every, headroom)
    assert settings.focus.budget == budget - every  # the allocator leaves the next interval's tokens room


def test_a_named_disk_session_survives_sigkill_and_continues(tmp_path: Path) -> None:
    prompt_len = 2 * T
    child = subprocess.Popen([sys.executable, str(SUPPORT), str(tmp_path), "diary", str(prompt_len)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            _, token, count = line.split()
            seen.append(int(token))
            assert int(count) == prompt_len + len(seen)
            if len(seen) == 30:
                child.send_signal(signal.SIGKILL)  # mid-decode, no chance to flush or close
                break
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""

    model, controller, _ = build(["--mc_tree", "disk", "--mc_tree_dir", str(tmp_path), "--mc_session", "diary"])
    runtime = InferenceRuntime(controller.nets)
    try:
        session = runtime.open_named(model, "diary")
        stored = session.history().tolist()
        assert stored[:prompt_len + 30] == prompt(prompt_len) + seen  # nothing the child yielded is lost
        bos = FakeTokenizer.SPECIALS["<|bos|>"]
        turn = [bos, 9, 10, 11]  # a new process: the CLI starts a conversation of its own
        out = _drain(runtime.generate(FakeEngine(model), turn, max_tokens=6, temperature=0.0))
        assert session.history().tolist() == [*stored, 9, 10, 11, *out]  # continues after the history, BOS dropped
        assert session.wc.num_tokens == session.num_tokens  # the model's context covers the whole history
    finally:
        runtime.close()
        controller.close()


def test_a_disk_session_refuses_a_model_whose_gistnet_would_make_other_gists(tmp_path: Path) -> None:
    flags = ["--mc_tree", "disk", "--mc_tree_dir", str(tmp_path), "--mc_session", "s"]
    model, controller, _ = build(flags)
    runtime = InferenceRuntime(controller.nets)
    _drain(runtime.generate(FakeEngine(model), prompt(2 * T), max_tokens=4, temperature=0.0))
    runtime.close()
    controller.close()
    _, other, _ = build([*flags, "--mc_seed", "7"])  # other GistNet weights
    with pytest.raises(SessionError, match=r"session 's' cannot be opened: .*GistNet version"):
        InferenceRuntime(other.nets).open_named(model, "s")
    other.close()


def test_a_protected_tail_shorter_than_h_still_queries_lensnet_with_the_last_h_raw_tokens() -> None:
    # --allocator_recent_tokens 4 with H = 8: the last 8 tokens need not be raw in the working context,
    # and LensNet's query is still their raw embeddings, read from the tree (D55)
    model, controller, cfg = build(["--allocator_recent_tokens", "4"])
    try:
        settings = SessionSettings.from_config(cfg, T, max_level=controller.lensnet.max_level)
        assert settings.protected == 4 and settings.horizon == 8
        tails: list[torch.Tensor] = []
        forward = controller.lensnet.forward

        def recording_forward(entries, levels, spans, tail, mask=None):  # type: ignore[no-untyped-def]
            tails.append(tail.detach().clone())
            return forward(entries, levels, spans, tail, mask)

        controller.lensnet.forward = recording_forward  # type: ignore[method-assign]
        session = MCSession(model, controller.gistnet, controller.lensnet, settings)
        ids = prompt(6 * T + 4)  # the 8 tokens before the protected 4 fill one block: a gist at the start
        session.ingest(ids)
        assert session.wc is not None and session.wc.levels[-4:].max() == 0
        with torch.no_grad():
            want = model.wte(torch.tensor(ids[-8:]))
        assert tails and torch.allclose(tails[0][0].float(), want.float(), atol=1e-3)
    finally:
        controller.close()


def test_lensnet_scores_a_session_through_its_trained_levels(tiny) -> None:
    # a session whose LensNet knows level 1 only: the working context of a long prompt holds coarser
    # gists, and LensNet is handed their level-1 descendants instead (focus.lens_view), as in the evaluation
    import dataclasses

    model, controller, cfg = tiny
    settings = dataclasses.replace(SessionSettings.from_config(cfg, T, max_level=controller.lensnet.max_level),
                                   lens_level=1)
    seen = record_lens_levels(controller.lensnet)
    session = MCSession(model, controller.gistnet, controller.lensnet, settings)
    logits = session.ingest(prompt(10 * T))
    for _ in range(9):
        logits = session.step(int(logits.argmax()))
    assert int(session.wc.levels.max()) > 1  # the history needed coarser gists than LensNet knows
    assert seen and max(seen) == 1


def test_the_training_probe_scores_through_the_trained_levels_too(tiny) -> None:
    # the telemetry probe refocuses a sequence longer than the window (D19) as chat would: LensNet is
    # handed the level-2 descendants of the recency layout's coarser gists, never the gists themselves
    from megacontext_plugin.training.probe import probe_focus

    model, controller, _ = tiny
    seen = record_lens_levels(controller.lensnet)
    probe = probe_focus(controller, torch.tensor(prompt(8 * T)), model.wte, budget=48)
    assert probe is not None and int(probe.before.levels.max()) > controller.lens_level
    assert seen and max(seen) == controller.lens_level
