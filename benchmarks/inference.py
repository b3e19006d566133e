"""Per-token decode latency and memory with MegaContext at long histories, against vanilla at 1x.

    python benchmarks/inference.py [--quick] [--depth N] --json PATH

nanochat's own ``GPT`` through a patched copy of ``NANOCHAT_DIR`` when it is set (``benchmarks/_models.py``:
width 64N rounded up to head_dim 128, vocab 65,536), else a nanochat-shaped ``TinyGPT`` stand-in (width 64N,
head_dim 64, vocab 8192), of ``--depth`` N (default 8), with ``sequence_len`` = the working-context
budget W = 512, K = 32 and the default knobs (refocus every 32 tokens, headroom W/8, protected
tail 64; GistNet and LensNet untrained, so LensNet's scores stay
inside the allocator's thresholds and the edits come from making room). For each history of 1, 4,
16 and 64 x W tokens (a random prompt), a fresh process runs ``InferenceRuntime.generate``: the
prompt goes into a RAM tree, then greedy decoding. Vanilla is the same model's plain KV-cache decode
(``forward_embeds`` on token embeddings, the model's own rotary table) from a ``W - M`` token prompt,
so its context grows to W over a block of M tokens: the 1x reference.

This machine is shared: every process uses one torch thread, and each MC block of M tokens is
paired with a vanilla block in the same process (alternating order), so both see the same load.
``ms_per_token`` is the median over blocks of wall time per token (refocuses, LensNet and KV
recomputes included), ``cpu_ms_per_token`` the same in thread CPU time; ``ratio_vs_vanilla`` is the
median of the paired wall-time ratios (``cpu_ratio_vs_vanilla`` in CPU time). Peak RSS is each
process's. ``--quick``: M = 64, 3 pairs (about 1-2 min); full: M = 192, 5 pairs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, plot_lines, png_path, print_table, write_json
from _models import BenchModel, build_model, model_kind

HISTORIES = (1, 4, 16, 64)
BUDGET = 512
GOAL_RATIO = 1.05
WARMUP = 16


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build(depth: int, seed: int) -> tuple[BenchModel, Any]:
    """The model (nanochat's GPT with ``NANOCHAT_DIR``, else the stand-in; ``sequence_len`` = W) and a
    controller with untrained aux nets at the default knobs."""
    import torch

    from megacontext_plugin.config import parse_config
    from megacontext_plugin.training import MCController

    torch.set_num_threads(1)
    bench = build_model(depth, BUDGET, seed)
    bench.model.eval()
    cfg = parse_config(["--mc"])
    controller = MCController(cfg, dim=bench.width, head_dim=bench.head_dim, sequence_len=BUDGET, total_steps=1)
    return bench, controller


class _Engine:
    def __init__(self, model: Any, vocab: int) -> None:
        self.model, self.vocab = model, vocab
        self.tokenizer = self

    def encode_special(self, name: str) -> int:  # outside the vocabulary: no row ends by chance
        return self.vocab + 1

    def get_bos_token_id(self) -> int:
        return self.vocab + 2


class _Vanilla:
    """The same model's plain KV-cache decode: token embeddings, its own rotary table, one entry per step."""

    def __init__(self, bench: BenchModel, tokens: int, seed: int) -> None:
        import torch

        from megacontext_plugin.inference import MCKVCache

        self.model, self.wte, self.tokens = bench.model, bench.wte, tokens
        self.prompt_len = BUDGET - tokens  # the context grows to the full window while a block decodes
        self.ids = torch.randint(0, bench.vocab, (1, self.prompt_len),
                                 generator=torch.Generator().manual_seed(seed))
        self.kv = MCKVCache(1, bench.width // bench.head_dim, BUDGET, bench.head_dim, bench.depth, "cpu",
                            torch.float32)

    def block(self) -> tuple[float, float]:
        """Prefill (untimed), then (wall, CPU) ms per token over ``tokens`` greedy steps."""
        import torch

        model, wte, kv, n = self.model, self.wte, self.kv, self.prompt_len
        with torch.inference_mode():
            kv.reset()
            logits = model.forward_embeds(wte(self.ids), self.ids, None, model.cos[:, :n], model.sin[:, :n],
                                          kv_cache=kv)[0, -1]
            t0, c0 = time.perf_counter(), time.thread_time()
            for pos in range(n, n + self.tokens):
                token = torch.argmax(logits, dim=-1, keepdim=True)[None]  # [1, 1]
                token.tolist()  # the host reads the token, as the Engine does
                logits = model.forward_embeds(wte(token), token, None, model.cos[:, pos:pos + 1],
                                              model.sin[:, pos:pos + 1], kv_cache=kv)[0, -1]
            return ((time.perf_counter() - t0) * 1e3 / self.tokens, (time.thread_time() - c0) * 1e3 / self.tokens)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _worker(depth: int, history_x: int, tokens: int, repeats: int, seed: int) -> dict[str, Any]:
    """One process: vanilla alone (``history_x`` 0), or MC at ``history_x`` paired with vanilla blocks."""
    import torch

    from megacontext_plugin.inference import InferenceRuntime

    bench, controller = _build(depth, seed)
    vanilla = _Vanilla(bench, tokens, seed)
    if history_x == 0:
        controller.close()
        vanilla.block()  # warm-up
        blocks = [vanilla.block() for _ in range(repeats)]
        return {"ms_per_token": _median([b[0] for b in blocks]), "cpu_ms_per_token": _median([b[1] for b in blocks]),
                "peak_rss_mb": _peak_rss_mb()}
    runtime = InferenceRuntime(controller.nets)
    history = history_x * BUDGET
    prompt = torch.randint(0, bench.vocab, (history,), generator=torch.Generator().manual_seed(seed)).tolist()
    stream = runtime.generate(_Engine(bench.model, bench.vocab), prompt, max_tokens=WARMUP + repeats * tokens,
                              temperature=0.0)
    assert stream is not None
    t0 = time.perf_counter()
    next(stream)  # ingest the history, first token
    ingest_s = time.perf_counter() - t0
    for _ in range(WARMUP - 1):
        next(stream)
    vanilla.block()  # warm-up
    rss_after_ingest = _rss_mb()
    session = runtime.last_session
    forwarded0 = session.stats.entries_forwarded
    mc_blocks: list[tuple[float, float]] = []
    vanilla_blocks: list[tuple[float, float]] = []

    def mc_block() -> tuple[float, float]:
        t, c = time.perf_counter(), time.thread_time()
        for _ in range(tokens):
            next(stream)
        return (time.perf_counter() - t) * 1e3 / tokens, (time.thread_time() - c) * 1e3 / tokens

    for r in range(repeats):  # paired blocks, alternating order: both see the same machine load
        if r % 2:
            mc_blocks.append(mc_block())
            vanilla_blocks.append(vanilla.block())
        else:
            vanilla_blocks.append(vanilla.block())
            mc_blocks.append(mc_block())
    stats = session.stats
    row = {
        **bench.describe(),
        "T": history,
        "B": 1,
        "history_x": history_x,
        "history_tokens": history,
        "ms_per_token": _median([m[0] for m in mc_blocks]),
        "ratio_vs_vanilla": _median([m[0] / v[0] for m, v in zip(mc_blocks, vanilla_blocks, strict=True)]),
        "cpu_ms_per_token": _median([m[1] for m in mc_blocks]),
        "cpu_ratio_vs_vanilla": _median([m[1] / v[1] for m, v in zip(mc_blocks, vanilla_blocks, strict=True)]),
        "peak_rss_mb": _peak_rss_mb(),
        "decode_rss_growth_mb": _rss_mb() - rss_after_ingest,
        "ingest_s": ingest_s,
        "paired_vanilla_ms_per_token": _median([v[0] for v in vanilla_blocks]),
        "paired_vanilla_cpu_ms_per_token": _median([v[1] for v in vanilla_blocks]),
        "blocks_ms": [m[0] for m in mc_blocks],
        "vanilla_blocks_ms": [v[0] for v in vanilla_blocks],
        "wc_entries": len(session.wc),
        "refocuses": stats.refocuses,
        "lens_calls": stats.lens_calls,
        "forced_collapses": stats.forced_collapses,
        "entries_forwarded_per_token": (stats.entries_forwarded - forwarded0) / (repeats * tokens),
        "tree_tokens": session.num_tokens,
    }
    row["ratio"] = row["ratio_vs_vanilla"]
    runtime.close()
    controller.close()
    return row


def _run_worker(*argv: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(*(int(v) for v in sys.argv[2:7]))))
        return
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--depth", type=int, default=8)
    ours, rest = extra.parse_known_args()
    args = parse_args(__doc__.splitlines()[0] + " Extra flag: --depth N (default 8: width 64*N).", rest)
    tokens, repeats = (64, 3) if args.quick else (192, 5)
    common = (str(ours.depth), str(tokens), str(repeats), str(args.seed))
    alone = _run_worker(str(ours.depth), "0", *common[1:])
    rows = [_run_worker(str(ours.depth), str(h), *common[1:]) for h in HISTORIES]
    vanilla_ms = statistics.median([b for r in rows for b in r["vanilla_blocks_ms"]])
    print(f"decode with --mc: {model_kind()} model, depth {ours.depth} (width {rows[0]['width']}, vocab "
          f"{rows[0]['vocab']}), W = {BUDGET}, K = 32, refocus every 32, "
          f"{repeats} blocks of {tokens} tokens (median), each paired with a vanilla block in the same process, "
          f"1 thread; vanilla = plain KV decode at 1x: {vanilla_ms:.3f} ms/token (alone: "
          f"{alone['ms_per_token']:.3f}), peak RSS {alone['peak_rss_mb']:.0f} MB")
    print_table(rows, ["history_x", "history_tokens", "ms_per_token", "paired_vanilla_ms_per_token",
                       "ratio_vs_vanilla", "cpu_ratio_vs_vanilla", "peak_rss_mb", "decode_rss_growth_mb",
                       "wc_entries", "refocuses", "entries_forwarded_per_token", "ingest_s"])
    at_64 = next(r for r in rows if r["history_x"] == 64)
    verdict = "meets" if at_64["ratio_vs_vanilla"] <= GOAL_RATIO else "MISSES"
    print(f"64x: {at_64['ratio_vs_vanilla']:.2f} x vanilla's 1x per-token latency ({verdict} the <= {GOAL_RATIO} "
          f"goal); "
          f"peak RSS {rows[0]['peak_rss_mb']:.0f} -> {at_64['peak_rss_mb']:.0f} MB from 1x to 64x "
          f"(vanilla alone {alone['peak_rss_mb']:.0f} MB)")
    write_json(args.json, {
        "benchmark": "inference",
        "quick": args.quick,
        "budget": BUDGET,
        "depth": ours.depth,
        "block_size": 32,
        "refocus_every": 32,
        "model": model_kind(),
        "tokens_per_block": tokens,
        "repeats": repeats,
        "goal_ratio": GOAL_RATIO,
        "rows": rows,
        "vanilla_ms_per_token": vanilla_ms,
        "vanilla_alone": alone,
    })
    xs = [r["history_x"] for r in rows]
    plot_lines(
        png_path(args, "inference.png"),
        {"--mc decode": (xs, [r["ms_per_token"] for r in rows]),
         "vanilla at 1x (paired blocks)": (xs, [r["paired_vanilla_ms_per_token"] for r in rows])},
        title=f"Per-token decode latency vs history (depth {ours.depth}, W={BUDGET}, CPU, 1 thread)",
        xlabel="history / working-context budget",
        ylabel="ms per token",
        logx=True,
        hline=(GOAL_RATIO * vanilla_ms, f"goal: {GOAL_RATIO} x vanilla"),
    )


if __name__ == "__main__":
    main()
