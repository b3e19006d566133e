"""A patched nanochat ``chat_web`` on loopback and its clients: what ``chat_load.py`` measures and the
integration test (``tests/test_chat_web_nanochat.py``) checks.

- :class:`Server` starts ``python -m scripts.chat_web`` in a patched nanochat tree on ``127.0.0.1``,
  waits for ``/health``, reads its resident memory (``/proc``), and stops or SIGKILLs it.
- :func:`chat` sends one request to ``/chat/completions`` and reads the streamed answer: HTTP status,
  text, time to the first token, and the error message of a refused request.
- :func:`run_clients` runs several clients at once, each a multi-turn conversation that resends the
  whole conversation every turn (as nanochat's web UI does), within a deadline.

- :func:`prepare_nanochat` makes what the server serves: a patched copy of nanochat at the pin and a
  ``NANOCHAT_BASE_DIR`` with a tokenizer and a depth-2 base model trained 3 steps with ``--mc``.

Clients use only the standard library and talk HTTP/1.1 to 127.0.0.1, nowhere else.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MC_FLAGS = ["--mc", "--block_size", "8", "--allocator_recent_tokens", "32", "--mc_horizon", "16",
            "--mc_auto_batch", "0"]
"""The tiny model's knobs (as the integration tests train it)."""
BASE_TRAIN = ["--device-type", "cpu", "--depth", "2", "--head-dim", "64", "--window-pattern", "L", "--max-seq-len",
              "256", "--device-batch-size", "2", "--total-batch-size", "512", "--num-iterations", "3",
              "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1"]
PLUGIN_ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "river", "ledger", "stone", "hills", "miller", "weather", "harvest", "number", "seven", "lantern",
    "orchard", "quiet", "morning", "bridge", "letter", "copper", "window", "garden", "thunder", "market",
    "candle", "winter", "meadow", "compass",
)


@dataclass
class Reply:
    """One request's outcome."""

    status: int
    text: str = ""
    first_token_s: float | None = None
    """Seconds from sending the request to the first streamed token (None: no token)."""
    total_s: float = 0.0
    detail: str = ""
    """A refused request's message (``detail`` of the JSON error body)."""
    done: bool = False
    """The stream ended with upstream's ``{"done": true}``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def message_text(client: int, turn: int, chars: int) -> str:
    """A deterministic user message of about ``chars`` characters for ``client``'s ``turn``."""
    rng = random.Random(1000 * client + turn)
    words: list[str] = [f"client {client} turn {turn}:"]
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:chars]


def chat(port: int, messages: Sequence[dict[str, str]] | None = None, *, max_tokens: int = 16,
         temperature: float = 0.0, timeout_s: float = 300.0, body: bytes | None = None,
         on_first_token: Callable[[], None] | None = None) -> Reply:
    """POST ``/chat/completions`` (``messages``, or a raw ``body``) and read the stream to its end."""
    if body is None:
        body = json.dumps({"messages": list(messages or []), "max_tokens": max_tokens, "temperature": temperature,
                           "top_k": 1}).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    start = time.perf_counter()
    try:
        conn.request("POST", "/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raw = response.read().decode(errors="replace")
            try:
                detail = json.loads(raw).get("detail", raw)
            except json.JSONDecodeError:
                detail = raw
            return Reply(response.status, detail=json.dumps(detail) if not isinstance(detail, str) else detail,
                         total_s=time.perf_counter() - start)
        reply = Reply(200)
        pieces: list[str] = []
        try:
            for line in response:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if "token" in event:
                    if reply.first_token_s is None:
                        reply.first_token_s = time.perf_counter() - start
                        if on_first_token is not None:
                            on_first_token()
                    pieces.append(event["token"])
                if event.get("done"):
                    reply.done = True
                    break
        except (OSError, http.client.HTTPException) as e:  # the stream broke (a killed server): done stays False
            reply.detail = f"{type(e).__name__}: {e}"
        reply.text = "".join(pieces)
        reply.total_s = time.perf_counter() - start
        return reply
    finally:
        conn.close()


class Server:
    """``scripts.chat_web`` of the patched nanochat ``tree`` on ``127.0.0.1:port``, its output in ``log``."""

    def __init__(self, tree: Path, env: dict[str, str], log: Path, flags: Sequence[str], port: int | None = None,
                 ready_s: float = 300.0) -> None:
        self.port = port or free_port()
        self.log = log
        cmd = [sys.executable, "-m", "scripts.chat_web", "--host", HOST, "--port", str(self.port), *flags]
        self._out = log.open("ab")
        env = {**env, "PYTHONUNBUFFERED": "1"}  # its log lines in the file as they are printed
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self._wait_ready(ready_s)

    def _wait_ready(self, ready_s: float) -> None:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chat_web exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/health")
                health = json.loads(conn.getresponse().read())
                conn.close()
                if health.get("ready"):
                    return
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"chat_web not ready after {ready_s:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace")

    def memory_mib(self) -> tuple[float, float]:
        """``(resident now, peak resident)`` of the server process, MiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no cleanup runs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def stop(self) -> None:
        """Ctrl-C (SIGINT: uvicorn shuts down and the process exits normally), SIGKILL after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._out.close()


@dataclass
class Conversation:
    """One client's conversation: its user turns and what the server answered to each."""

    client: int
    user_turns: list[str]
    replies: list[Reply] = field(default_factory=list)

    def messages_for(self, turn: int) -> list[dict[str, str]]:
        """The whole conversation sent for ``turn`` (earlier answers as the client received them)."""
        out: list[dict[str, str]] = []
        for i in range(turn):
            out += [{"role": "user", "content": self.user_turns[i]},
                    {"role": "assistant", "content": self.replies[i].text or "(no answer)"}]
        return [*out, {"role": "user", "content": self.user_turns[turn]}]


def conversations(clients: int, turns: int, first_chars: int, later_chars: int, first_client: int = 0
                  ) -> list[Conversation]:
    """``clients`` conversations of ``turns`` user turns: a long first message (past the model's
    window, so MegaContext decodes it), shorter ones after."""
    return [Conversation(c, [message_text(c, t, first_chars if t == 0 else later_chars) for t in range(turns)])
            for c in range(first_client, first_client + clients)]


def converse(port: int, conversation: Conversation, max_tokens: int, deadline: float,
             after_reply: Callable[[Reply], None] | None = None) -> None:
    """Send ``conversation``'s turns in order (each waits for the previous answer) until the deadline."""
    for turn in range(len(conversation.user_turns)):
        if time.monotonic() >= deadline:
            return
        reply = chat(port, conversation.messages_for(turn), max_tokens=max_tokens,
                     timeout_s=max(1.0, deadline - time.monotonic()))
        conversation.replies.append(reply)
        if after_reply is not None:
            after_reply(reply)
        if reply.status != 200:
            return


def run_clients(port: int, convs: Sequence[Conversation], max_tokens: int, deadline_s: float,
                after_reply: Callable[[Reply], None] | None = None) -> float:
    """Every conversation in a thread of its own, at once (their turns interleave at the server);
    returns the wall time. Stops sending new turns at ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    start = time.perf_counter()
    threads = [threading.Thread(target=converse, args=(port, c, max_tokens, deadline, after_reply)) for c in convs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(replies: Sequence[Reply]) -> dict[str, Any]:
    firsts = [r.first_token_s for r in replies if r.first_token_s is not None]
    return {"requests": len(replies), "answered": len(firsts),
            "first_token_p50_s": percentile(firsts, 0.5), "first_token_p99_s": percentile(firsts, 0.99),
            "first_token_max_s": max(firsts) if firsts else float("nan")}


def nanochat_env(tree: Path, base: Path) -> dict[str, str]:
    """An upstream script's environment: the tree and this checkout's plugin on PYTHONPATH, the base dir."""
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_PLUGINS"}
    return env | {"PYTHONPATH": os.pathsep.join([str(tree), str(PLUGIN_ROOT)]), "NANOCHAT_BASE_DIR": str(base),
                  "OMP_NUM_THREADS": "2"}


def _run(cmd: Sequence[str], tree: Path, env: dict[str, str], timeout_s: float) -> None:
    proc = subprocess.run(list(cmd), cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if proc.returncode != 0:
        output = proc.stdout[-1500:] + proc.stderr[-1500:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{output}")


def prepare_nanochat(nanochat_dir: Path, root: Path) -> tuple[Path, Path]:
    """``(tree, base)``: nanochat at the pin patched in ``root/nanochat``, and in ``root/base`` our corpus,
    a 512-token tokenizer and a depth-2 base model trained 3 steps with ``--mc`` (about a minute on a CPU).

    Three steps leave the output projections near their zero init, so that model would answer every
    prompt alike; they are randomised (:func:`randomise_projections`) so that each greedy answer is a
    function of the whole working context, and an answer shows which context it was decoded from."""
    import shutil

    from megacontext_plugin import nanochat_patch
    from megacontext_plugin.data.corpus import write_corpus

    tree, base = root / "nanochat", root / "base"
    shutil.copytree(nanochat_dir, tree)
    nanochat_patch.apply(tree)
    write_corpus(base / "base_data", num_shards=3, docs_per_shard=48, seed=0)
    env = nanochat_env(tree, base)
    _run([sys.executable, "-m", "scripts.tok_train", "--max-chars", "1000000", "--vocab-size", "512"], tree,
         {**env, "NANOCHAT_PLUGINS": "none"}, 300)
    _run([sys.executable, "-m", "scripts.base_train", *BASE_TRAIN, *MC_FLAGS], tree, env, 600)
    randomise_projections(base / "base_checkpoints" / "d2" / "model_000003.pt")
    return tree, base


def randomise_projections(checkpoint: Path, std: float = 0.2) -> None:
    """Attention and MLP output projections and the LM head of a nanochat checkpoint, redrawn (seeded)."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for name, weight in state.items():
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight", "lm_head.weight")):
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
    torch.save(state, checkpoint)


def server_flags(trees: Path, *extra: str) -> list[str]:
    """``chat_web`` serving the tiny base model on the CPU with ``--mc`` and disk trees under ``trees``."""
    return ["-i", "base", "--device-type", "cpu", "-d", "float32", *MC_FLAGS, "--mc_tree", "disk",
            "--mc_tree_dir", str(trees), *extra]
