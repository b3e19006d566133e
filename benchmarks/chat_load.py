"""Load on nanochat's chat_web with --mc over loopback: requests, clients, first-token latency, memory.

    NANOCHAT_DIR=/path/to/nanochat-a91743c python benchmarks/chat_load.py [--quick] --json PATH

Builds what it serves in a temporary directory (``_chat_server.prepare_nanochat``: nanochat at the
pin, patched; a depth-2 base model trained 3 steps with ``--mc`` on the CPU, about a minute), starts
``scripts.chat_web --mc`` on 127.0.0.1 with disk trees, then:

1. ``interleaved``: C clients at once, each a conversation of T turns that resends the whole
   conversation every turn (a first message of 700 characters, about 300 tokens: past the
   256-token window, so MegaContext decodes every answer), greedy, 16 tokens per answer;
2. ``abandoned``: A one-turn conversations, one after another, never continued: the sessions
   pile up until ``--mc_max_sessions`` drops the least recently used ones.

First-token latency runs from sending the request to the first streamed token (queueing behind
other clients included). Memory is the server process's resident set (``/proc``), sampled after
every answer of phase 2; ``peak_rss_mib`` is its high-water mark over the whole run. Only
127.0.0.1 is contacted; every request has a deadline. ``--quick``: C=4, T=3, A=8, cap 4 (about
2 min with the preparation); full: C=8, T=4, A=32, cap 8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _chat_server as srv
from _common import parse_args, plot_lines, png_path, print_table, write_json

FIRST_CHARS, LATER_CHARS, MAX_TOKENS = 700, 120, 16
DEADLINE_S = 900.0


def _phase(name: str, clients: int, replies: list[srv.Reply], wall_s: float) -> dict[str, Any]:
    return {"phase": name, "clients": clients, **srv.latency_summary(replies),
            "errors_4xx": sum(400 <= r.status < 500 for r in replies),
            "errors_5xx": sum(r.status >= 500 for r in replies),
            "broken_streams": sum(r.status == 200 and not r.done for r in replies),
            "wall_s": wall_s, "requests_per_s": len(replies) / wall_s if wall_s > 0 else float("nan")}


def run(nanochat: Path, work: Path, clients: int, turns: int, abandoned: int, cap: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    tree, base = srv.prepare_nanochat(nanochat, work)
    prepare_s = time.perf_counter() - t0
    trees = work / "trees"
    server = srv.Server(tree, srv.nanochat_env(tree, base), work / "server.log",
                        srv.server_flags(trees, "--mc_max_sessions", str(cap), "--mc_telemetry", "none"))
    try:
        rss_start, _ = server.memory_mib()
        convs = srv.conversations(clients, turns, FIRST_CHARS, LATER_CHARS)
        wall = srv.run_clients(server.port, convs, MAX_TOKENS, DEADLINE_S)
        interleaved = _phase("interleaved", clients, [r for c in convs for r in c.replies], wall)
        rss_after_load, _ = server.memory_mib()

        memory: list[tuple[int, float]] = []
        left: list[srv.Reply] = []
        start = time.perf_counter()
        for conversation in srv.conversations(abandoned, 1, FIRST_CHARS, 0, first_client=1000):
            srv.converse(server.port, conversation, MAX_TOKENS, time.monotonic() + DEADLINE_S)
            left += conversation.replies
            memory.append((len(left), server.memory_mib()[0]))
        abandoned_row = _phase("abandoned", 1, left, time.perf_counter() - start)
        _, peak = server.memory_mib()
        held = len(list(trees.glob("unnamed-*")))
        alive = server.alive()
    finally:
        server.stop()
    return {
        "rows": [interleaved, abandoned_row],
        "clients": clients, "turns": turns, "abandoned": abandoned, "max_sessions": cap,
        "requests": interleaved["requests"] + abandoned_row["requests"],
        "first_token_p50_s": interleaved["first_token_p50_s"], "first_token_p99_s": interleaved["first_token_p99_s"],
        "rss_start_mib": rss_start, "rss_after_interleaved_mib": rss_after_load,
        "rss_by_abandoned": [{"conversations": n, "rss_mib": rss} for n, rss in memory],
        "rss_end_mib": memory[-1][1] if memory else float("nan"), "peak_rss_mib": peak,
        "sessions_held_at_end": held, "server_alive": alive, "prepare_s": prepare_s,
        "max_tokens": MAX_TOKENS, "first_message_chars": FIRST_CHARS, "later_message_chars": LATER_CHARS,
    }


def main() -> None:
    extra = argparse.ArgumentParser(add_help=False)
    raw = os.environ.get("NANOCHAT_DIR", "")
    extra.add_argument("--nanochat", type=Path, default=Path(raw) if raw else None)
    ours, rest = extra.parse_known_args()
    args = parse_args(__doc__.splitlines()[0] + " Extra flag: --nanochat DIR (default $NANOCHAT_DIR).", rest)
    if ours.nanochat is None or not (ours.nanochat / "scripts" / "chat_web.py").is_file():
        raise SystemExit("error: point --nanochat (or NANOCHAT_DIR) at an extract of nanochat a91743c")
    clients, turns, abandoned, cap = (4, 3, 8, 4) if args.quick else (8, 4, 32, 8)
    with tempfile.TemporaryDirectory(prefix="chat-load-") as tmp:
        result = run(ours.nanochat, Path(tmp), clients, turns, abandoned, cap)
    print(f"chat_web --mc on 127.0.0.1 (depth-2 model, CPU, disk trees, --mc_max_sessions {cap}): {clients} clients "
          f"x {turns} turns at once, then {abandoned} abandoned conversations; {MAX_TOKENS} tokens per answer")
    print_table(result["rows"], ["phase", "clients", "requests", "answered", "errors_4xx", "errors_5xx",
                                 "broken_streams", "first_token_p50_s", "first_token_p99_s", "first_token_max_s",
                                 "requests_per_s"])
    print(f"resident memory: {result['rss_start_mib']:.0f} MiB at start, {result['rss_after_interleaved_mib']:.0f} "
          f"after the clients, {result['rss_end_mib']:.0f} after {abandoned} abandoned conversations "
          f"(peak {result['peak_rss_mib']:.0f}); sessions held at the end: {result['sessions_held_at_end']}")
    write_json(args.json, {"benchmark": "chat_load", "quick": args.quick, **result})
    points = result["rss_by_abandoned"]
    plot_lines(png_path(args, "chat_load.png"),
               {"server resident set": ([p["conversations"] for p in points], [p["rss_mib"] for p in points])},
               title=f"chat_web --mc: memory vs abandoned conversations (cap {cap})",
               xlabel="abandoned conversations served", ylabel="resident MiB")


if __name__ == "__main__":
    main()
