"""nanochat's web server with --mc under load, on loopback only (needs NANOCHAT_DIR): interleaved
clients get the answers their conversations get alone, bad requests get a 4xx that says why,
abandoned sessions are dropped by the pool's rule, a named session is refused beyond loopback and
keeps its committed history through a SIGKILL, and what holds a conversation is owner-only.

Bounded: every request has a deadline, and the whole module sends a fixed number of requests."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
_SPEC = importlib.util.spec_from_file_location(
    "chat_server", Path(__file__).resolve().parents[1] / "benchmarks" / "_chat_server.py")
assert _SPEC is not None and _SPEC.loader is not None
srv = sys.modules.setdefault("chat_server", importlib.util.module_from_spec(_SPEC))  # dataclasses look it up
_SPEC.loader.exec_module(srv)

CLIENTS, TURNS, MAX_TOKENS = 3, 3, 16
CAP = 4  # --mc_max_sessions: above the sessions made between two turns of one client (CLIENTS - 1)
ABANDONED = 2 * CAP
LIMIT = 40_000  # --mc_web_max_chars: above upstream's 32,000
FIRST_CHARS = 700  # about 300 tokens with the 512-token vocabulary: past the 256-token window, so MC decodes
DEADLINE_S = 600.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A patched nanochat tree and a NANOCHAT_BASE_DIR with a tiny base model trained with --mc
    (``prepare_nanochat``: its output projections randomised, so that answers tell their contexts apart)."""
    raw = os.environ.get("NANOCHAT_DIR", "")
    if not raw:
        pytest.skip("NANOCHAT_DIR is not set: point it at an extract of nanochat a91743c (see README, Development)")
    for module in ("filelock", "rustbpe", "tokenizers", "pyarrow", "fastapi", "uvicorn"):
        pytest.importorskip(module, reason=f"upstream's scripts need {module}")
    return srv.prepare_nanochat(Path(raw), tmp_path_factory.mktemp("chat-web"))


def _env(tree: Path, base: Path) -> dict[str, str]:
    return srv.nanochat_env(tree, base)


def _owner_only(root: Path) -> dict[str, str]:
    """Every directory under ``root`` (itself included) that is not 0700 and every file that is not 0600."""
    bad = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            bad[str(path.relative_to(root))] = oct(mode)
    return bad


@pytest.mark.upstream("pin")  # master has no scripts/chat_web.py
def test_chat_web_with_mc_serves_interleaved_clients_on_loopback_as_each_alone(
        trained: tuple[Path, Path], tmp_path: Path) -> None:
    tree, base = trained
    trees = tmp_path / "trees"
    server = srv.Server(tree, _env(tree, base), tmp_path / "server.log",
                        srv.server_flags(trees, "--mc_max_sessions", str(CAP), "--mc_web_max_chars", str(LIMIT)))
    replies = []
    try:
        port = server.port
        bad = {  # each refused with a 4xx that says why
            "unknown role": (srv.chat(port, [{"role": "robot", "content": "hello"}]), 400, "invalid role"),
            "empty message": (srv.chat(port, [{"role": "user", "content": ""}]), 400, "empty content"),
            "message over the limit": (srv.chat(port, [{"role": "user", "content": "x" * (LIMIT + 1)}]), 400,
                                       f"Maximum {LIMIT} characters"),
            "conversation over the limit": (srv.chat(port, [{"role": "user", "content": "x" * 30_000},
                                                            {"role": "assistant", "content": "y" * 6_000},
                                                            {"role": "user", "content": "z" * 5_000}]), 400,
                                            f"Total conversation is too long. Maximum {LIMIT}"),
            "invalid JSON": (srv.chat(port, body=b'{"messages": [{"role": "user", '), 422, "JSON decode error"),
        }
        for what, (reply, status, says) in bad.items():
            assert (reply.status, says in reply.detail) == (status, True), (what, reply)

        alone = srv.conversations(CLIENTS, TURNS, FIRST_CHARS, 120)
        for conversation in alone:  # one after another: nothing interleaves
            srv.converse(port, conversation, MAX_TOKENS, time.monotonic() + DEADLINE_S)
        together = srv.conversations(CLIENTS, TURNS, FIRST_CHARS, 120)
        srv.run_clients(port, together, MAX_TOKENS, DEADLINE_S)
        for conversation in [*alone, *together]:
            replies += conversation.replies
            assert [(r.status, r.done) for r in conversation.replies] == [(200, True)] * TURNS, conversation
        assert [[r.text for r in c.replies] for c in together] == [[r.text for r in c.replies] for c in alone]
        assert len({r.text for c in alone for r in c.replies}) == CLIENTS * TURNS  # each answer tells its context
        assert sum(len(r.text) for r in replies) > 0

        long = srv.chat(port, [{"role": "user", "content": srv.message_text(99, 0, 33_000)}], max_tokens=MAX_TOKENS)
        assert (long.status, long.done) == (200, True), long  # past upstream's 32,000: --mc's limit holds it
        replies.append(long)

        for conversation in srv.conversations(ABANDONED, 1, FIRST_CHARS, 0, first_client=10):  # never continued
            srv.converse(port, conversation, MAX_TOKENS, time.monotonic() + DEADLINE_S)
            replies += conversation.replies
            assert conversation.replies[0].status == 200
        assert len(list(trees.glob("unnamed-*"))) == CAP  # the pool's cap: dropped sessions' trees are deleted
        assert server.alive()
    finally:
        server.stop()
    log = server.output()
    assert not [r for r in replies if r.status >= 500]
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert f"chat_web accepts conversations, and messages, of up to {LIMIT:,} characters" in log
    assert f"each conversation gets its own session (up to {CAP} kept" in log
    assert not list(trees.glob("unnamed-*"))  # removed when the server stops
    assert not _owner_only(trees)
    telemetry = list((base / "megacontext" / "telemetry").glob("chat-*/telemetry.jsonl"))
    assert telemetry and not _owner_only(base / "megacontext")


def _history(tree: Path, base: Path, session: Path) -> tuple[int, str]:
    """The committed history of a disk session (``docs/tree.md``: manifest, then int32 ids after a
    64-byte header), as (tokens, text decoded by nanochat's tokenizer)."""
    num_tokens = json.loads((session / "manifest.json").read_text())["num_tokens"]
    ids = np.fromfile(session / "lod0.ids", dtype="<i4", offset=64)[:num_tokens].tolist()
    decode = ("import json, sys; from nanochat.tokenizer import get_tokenizer; "
              "sys.stdout.write(get_tokenizer().decode(json.load(sys.stdin)))")
    env = {**_env(tree, base), "NANOCHAT_PLUGINS": "none"}
    proc = subprocess.run([sys.executable, "-c", decode], input=json.dumps(ids), cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return num_tokens, proc.stdout


@pytest.mark.upstream("pin")  # master has no scripts/chat_web.py
def test_a_named_session_is_refused_beyond_loopback_and_survives_a_sigkill_of_the_server(
        trained: tuple[Path, Path], tmp_path: Path) -> None:
    tree, base = trained
    trees = tmp_path / "trees"
    flags = srv.server_flags(trees, "--mc_session", "notes")
    refused = subprocess.run([sys.executable, "-m", "scripts.chat_web", *flags],
                             cwd=tree, env=_env(tree, base), capture_output=True, text=True, timeout=300,
                             check=False)  # upstream's default --host 0.0.0.0
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: --mc_session notes: chat_web on --host 0.0.0.0 would give every client")
    assert not (trees / "notes").exists()

    server = srv.Server(tree, _env(tree, base), tmp_path / "first.log", flags)
    conversation = srv.conversations(1, 3, FIRST_CHARS, 120)[0]
    try:
        assert "every conversation of every client goes to session 'notes'" in server.output()
        srv.converse(server.port, conversation, MAX_TOKENS, time.monotonic() + DEADLINE_S)  # two answered turns
        del conversation.replies[2:]
        assert [(r.status, r.done) for r in conversation.replies] == [(200, True)] * 2
        cut = srv.chat(server.port, conversation.messages_for(2), max_tokens=MAX_TOKENS, on_first_token=server.kill)
    finally:
        if server.alive():
            server.stop()
    assert cut.status == 200 and not cut.done and cut.text  # killed mid-answer, after its first token

    session = trees / "notes"
    committed, text = _history(tree, base, session)
    for said in [*conversation.user_turns, *(r.text for r in conversation.replies), cut.text]:
        assert said in text, said  # every turn, every answer, and what the client saw of the cut one
    assert not _owner_only(session)

    again = srv.Server(tree, _env(tree, base), tmp_path / "second.log", flags)
    try:
        assert f"session 'notes' (disk, {session}): {committed} tokens of history" in again.output()
        follow_up = srv.chat(again.port, [{"role": "user", "content": "what did we talk about?"}],
                             max_tokens=MAX_TOKENS)
        assert (follow_up.status, follow_up.done) == (200, True)
    finally:
        again.stop()
    grown, _ = _history(tree, base, session)
    assert grown > committed  # the new conversation went after the kept history
