#!/usr/bin/env bash
# The CUDA path in one run, for the day a GPU is lent: on one H100/H200 with PyTorch preinstalled and no
# network, in at most 8 minutes, one table of
#   - base_train at depth 12 (sequence 2048), vanilla and --mc, a few hundred steps each: tokens/s, MFU
#     (nanochat's own figure, and with --mc the honest mc/mfu: every FLOP executed), dynamo's graphs,
#     graph breaks and recompiles, peak memory;
#   - the --mc run under `torchrun --standalone --nproc_per_node=1` (DDP with world size 1);
#   - chat_cli --mc on a prompt 10x the model's window (read into a disk session: the history it stored).
# Every stage's log stays in the work directory; a failed stage is a FAILED row and exit status 1.
#
#   bash integration/gpu_check.sh [--cpu] [--wheels DIR]
#
#   --cpu         the same stages tiny (depth 2, sequence 256, a few steps, no torch.compile: inductor
#                 takes minutes on a small CPU), on CPU; the torchrun row is skipped there (upstream's DDP
#                 optimizers need NCCL). CI runs this (tests/test_gpu_check.py).
#   --wheels DIR  a directory of wheels for what the Python lacks (installed with --no-index into a venv
#                 that sees the preinstalled torch). Beyond torch, that is this package and its
#                 dependencies (numpy, pluggy, tiktoken, wandb, opentelemetry-sdk,
#                 opentelemetry-exporter-otlp, pyarrow) and the `nanochat` extra (datasets, fastapi,
#                 filelock, jinja2, psutil, pydantic, pytest, pyyaml, regex, requests, rustbpe, tiktoken,
#                 tokenizers, uvicorn, wandb), with their own dependencies. Made on a machine with network
#                 and the GPU box's platform and Python:
#                   pip wheel --wheel-dir wheels '.[nanochat]' && rm -f wheels/torch-* wheels/nvidia_* wheels/triton-*
#
# Environment: PYTHON (default .venv/bin/python if present, else python3; it must import torch),
# NANOCHAT_DIR (nanochat at the pin; default: the archive ../shared/upstream/nanochat-a91743c.tar.gz, else
# .mc/nanochat), MC_GPU_CHECK_DIR (work directory: tree, data, checkpoints, logs; default a new temporary
# one, kept). Nothing is downloaded: the pretraining data is `megacontext corpus`, the tokenizer is trained
# here. Flash Attention 3 comes from the `kernels` package and its Hub cache when present; without it
# nanochat falls back to SDPA, so the runs use --window-pattern L (no sliding windows).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOL=gpu_check
. "$ROOT/integration/lib.sh"

CPU=0
WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU=1; shift ;;
        --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; WHEELS=$2; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (expected --cpu or --wheels DIR)" ;;
    esac
done
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS is not a directory"

if [ "$CPU" = 1 ]; then
    DEV=cpu DEPTH=2 SEQ=256 DBS=2 VOCAB=512 STEPS=6 MC_STEPS=6 TR_STEPS=0 CHARS=1000000
    SHARDS=(--shards 3 --docs-per-shard 48 --max-chars 6000)
    MODEL=(--head-dim 64)
    MC_KNOBS=(--block_size 8 --allocator_recent_tokens 32 --mc_horizon 16)
    CHAT=(-d float32)
    export GPU_CHECK_NO_COMPILE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    # d12 as run10.sh trains it (sequence 2048, device batch 32); --mc auto-batch divides the batch and the
    # iterations, so its step count ends near a third of MC_STEPS (it prints both)
    DEV=cuda DEPTH=12 SEQ=2048 DBS=32 VOCAB=8192 STEPS=300 MC_STEPS=300 TR_STEPS=45 CHARS=20000000
    SHARDS=(--shards 8 --docs-per-shard 256 --max-chars 20000)
    MODEL=()
    MC_KNOBS=()
    CHAT=(-d bfloat16)
fi

WORK=${MC_GPU_CHECK_DIR:-$(mktemp -d -t mc-gpu-check.XXXXXX)}
mkdir -p "$WORK/logs"
START=$SECONDS

# 1) the Python: torch preinstalled; what else is missing comes from --wheels into a venv that sees torch
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi; fi
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: this check needs PyTorch preinstalled (PYTHON=...)"
NEEDS='import megacontext_plugin, datasets, filelock, jinja2, psutil, pyarrow, regex, rustbpe, tiktoken, tokenizers, yaml'
if ! "$PY" -c "$NEEDS" 2>/dev/null; then
    [ -n "$WHEELS" ] || die "$PY lacks this package or nanochat's dependencies: pass --wheels DIR (see --help)"
    say "installing from $WHEELS (no index) into $WORK/venv, which sees $PY's torch"
    "$PY" -m venv --system-site-packages "$WORK/venv"
    "$WORK/venv/bin/python" -m pip install -q --no-index --find-links "$WHEELS" 'megacontext-plugin[nanochat]' \
        > "$WORK/logs/install.log" 2>&1 || die "installing from $WHEELS failed: $WORK/logs/install.log"
    PY=$WORK/venv/bin/python
    "$PY" -c "$NEEDS" || die "still missing a module after installing from $WHEELS"
fi
BIN=$(dirname "$PY")
MC_CLI=("$PY" -m megacontext_plugin.cli)
[ "$DEV" = cpu ] || "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "no CUDA device visible to torch (use --cpu for the tiny CPU run)"

# 2) nanochat at the pin, patched, in the work directory
if [ -z "${NANOCHAT_DIR:-}" ]; then
    ARCHIVE=$ROOT/../shared/upstream/nanochat-a91743c.tar.gz
    if [ -f "$ARCHIVE" ]; then
        mkdir -p "$WORK/upstream" && tar -xzf "$ARCHIVE" -C "$WORK/upstream"
        NANOCHAT_DIR=$WORK/upstream/nanochat
    elif [ -d "$ROOT/.mc/nanochat" ]; then
        NANOCHAT_DIR=$ROOT/.mc/nanochat
    else
        die "no nanochat: set NANOCHAT_DIR to nanochat at the pin (or run integration/mc_setup)"
    fi
fi
[ -f "$NANOCHAT_DIR/nanochat/gpt.py" ] || die "NANOCHAT_DIR=$NANOCHAT_DIR is not a nanochat tree"
NC=$WORK/nanochat
rm -rf "$NC" && cp -r "$NANOCHAT_DIR" "$NC"
(cd "$WORK" && "${MC_CLI[@]}" nanochat apply "$NC" > "$WORK/logs/apply.log") || die "patching failed: $WORK/logs/apply.log"

export NANOCHAT_BASE_DIR=$WORK/base PYTHONPATH=$NC HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
mkdir -p "$NANOCHAT_BASE_DIR"

# The runner: runs a nanochat script in-process and, at exit, writes dynamo's graph/break/recompile counts,
# the peak memory and everything the script logged to W&B (its DummyWandb, recorded) as JSON.
cat > "$WORK/runner.py" <<'EOF'
import atexit, json, os, resource, runpy, sys

import torch

module, argv = sys.argv[1], sys.argv[2:]
logged: dict[str, float] = {}
if os.environ.get("GPU_CHECK_NO_COMPILE") == "1":  # --cpu: inductor takes minutes on a small CPU
    torch.compile = lambda model=None, *a, **k: model if model is not None else (lambda m: m)
import nanochat.common as common  # noqa: E402


class RecordingWandb(common.DummyWandb):
    def log(self, data, *args, **kwargs):
        logged.update({k: float(v) for k, v in data.items() if isinstance(v, (int, float))})


common.DummyWandb = RecordingWandb  # base_train imports it by name after this


def report() -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from torch._dynamo.utils import counters, get_compilation_metrics
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(1 for m in get_compilation_metrics() if getattr(m, "recompile_reason", None)),
            "peak_mib": peak, "peak_kind": "GPU" if cuda else "RSS", "logged": logged}
    with open(os.environ["GPU_CHECK_OUT"], "w") as f:
        json.dump(info, f)


atexit.register(report)
sys.argv = [module, *argv]
runpy.run_module(module, run_name="__main__", alter_sys=True)
EOF

ROWS=$WORK/rows.tsv
: > "$ROWS"
FAILED=0
stage() {  # stage NAME LIMIT_S LAUNCHER... -- runs LAUNCHER in the tree with a time limit, logs to logs/NAME.log
    local name=$1 limit=$2 t0=$SECONDS; shift 2
    say "== $name"
    if (cd "$NC" && GPU_CHECK_OUT="$WORK/$name.json" timeout "$limit" "$@") > "$WORK/logs/$name.log" 2>&1; then
        printf '%s\tok\t%s\n' "$name" "$((SECONDS - t0))" >> "$ROWS"
    else
        printf '%s\tFAILED (exit %s; logs/%s.log)\t%s\n' "$name" "$?" "$name" "$((SECONDS - t0))" >> "$ROWS"
        FAILED=1
        say "$name failed: $WORK/logs/$name.log"
    fi
}

# 3) data and tokenizer (offline)
"${MC_CLI[@]}" corpus --out "$NANOCHAT_BASE_DIR/base_data" "${SHARDS[@]}" > "$WORK/logs/data.log" 2>&1 \
    || die "megacontext corpus failed: $WORK/logs/data.log"
(cd "$NC" && NANOCHAT_PLUGINS=none "$PY" -m scripts.tok_train --max-chars "$CHARS" --vocab-size "$VOCAB") \
    > "$WORK/logs/tokenizer.log" 2>&1 || die "tok_train failed: $WORK/logs/tokenizer.log"

# 4) training: vanilla, --mc, --mc under torchrun; then chat
TRAIN=(--device-type "$DEV" --depth "$DEPTH" "${MODEL[@]}" --window-pattern L --max-seq-len "$SEQ"
       --device-batch-size "$DBS" --total-batch-size $((DBS * SEQ)) --eval-every -1 --core-metric-every -1
       --sample-every -1)
MC=(--mc "${MC_KNOBS[@]}")
NANOCHAT_PLUGINS=none stage vanilla 300 "$PY" "$WORK/runner.py" scripts.base_train "${TRAIN[@]}" \
    --num-iterations "$STEPS" --model-tag vanilla
NANOCHAT_PLUGINS=megacontext stage mc 300 "$PY" "$WORK/runner.py" scripts.base_train "${TRAIN[@]}" \
    --num-iterations "$MC_STEPS" --model-tag mc "${MC[@]}"
if [ "$TR_STEPS" -gt 0 ]; then
    NANOCHAT_PLUGINS=megacontext stage torchrun 180 "$BIN/torchrun" --standalone --nproc_per_node=1 \
        "$WORK/runner.py" scripts.base_train "${TRAIN[@]}" --num-iterations "$TR_STEPS" --model-tag mc-ddp "${MC[@]}"
else
    printf 'torchrun\tskipped on CPU: upstream DDP optimizers need NCCL\t0\n' >> "$ROWS"
fi

# a prompt of 10x the window, in the tokenizer just trained, read into a disk session; the second call
# reopens the session and says how many tokens of history it holds
(cd "$NC" && "$PY" - "$SEQ" > "$WORK/prompt.txt") <<'EOF'
import sys
from nanochat.tokenizer import get_tokenizer
words = ("the river keeps a quiet ledger of every stone it has carried down from the hills, and the miller reads it "
         "aloud to anyone who asks about the weather, the harvest or the number seven ")
tok, text = get_tokenizer(), ""
while len(tok.encode(text)) < 10 * int(sys.argv[1]):
    text += words
print(text + " What does the miller read aloud?")
EOF
SESSION=(--mc_tree disk --mc_tree_dir "$WORK/trees" --mc_session gpu-check)
NANOCHAT_PLUGINS=megacontext stage chat 240 "$PY" "$WORK/runner.py" scripts.chat_cli -i base -g mc --device-type "$DEV" \
    "${CHAT[@]}" -t 0 -p "$(cat "$WORK/prompt.txt")" "${MC[@]}" "${SESSION[@]}"
NANOCHAT_PLUGINS=megacontext stage chat-reopen 120 "$PY" "$WORK/runner.py" scripts.chat_cli -i base -g mc \
    --device-type "$DEV" "${CHAT[@]}" -t 0 -p "And the weather?" "${MC[@]}" "${SESSION[@]}"

# 5) the table
"$PY" - "$WORK" "$SEQ" "$DEPTH" "$((SECONDS - START))" "$DEV" <<'EOF'
import json, re, statistics, sys
from pathlib import Path

work, seq, depth, total, dev = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = {line.split("\t")[0]: line.rstrip("\n").split("\t")[1:] for line in (work / "rows.tsv").open()}
STEP = re.compile(r"^step (\d+)/\d+ .*\| tok/sec: ([\d,]+) \| mfu: ([\d.]+)", re.M)


def info(name):
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train_row(name, label, launcher):
    status, secs = rows.get(name, ["not run", "0"])
    log = (work / "logs" / f"{name}.log").read_text() if (work / "logs" / f"{name}.log").is_file() else ""
    steps = [(int(s), int(t.replace(",", "")), float(m)) for s, t, m in STEP.findall(log)]
    timed = [s for s in steps if s[0] > 0] or steps  # step 0 carries the compile
    tok = f"{statistics.median(t for _, t, _ in timed):,.0f}" if timed else "-"
    mfu = f"{statistics.median(m for _, _, m in timed):.2f}" if timed and dev == "cuda" else "-"
    data = info(name)
    honest = data.get("logged", {}).get("mc/mfu")
    honest = f"{honest:.2f}" if honest is not None else "-"
    peak = f"{data['peak_mib']:,.0f} ({data['peak_kind']})" if data else "-"
    counts = f"{data['graphs']}/{data['graph_breaks']}/{data['recompiles']}" if data else "-"
    return [label, launcher, str(len(steps)), tok, mfu, honest, counts, peak, secs, status]


out = [["check", "launcher", "steps", "tok/s", "MFU %", "mc/mfu %", "graphs/breaks/recompiles", "peak MiB", "s",
        "result"]]
out.append(train_row("vanilla", f"base_train d{depth} vanilla", "python"))
out.append(train_row("mc", f"base_train d{depth} --mc", "python"))
status, secs = rows.get("torchrun", ["not run", "0"])
if status.startswith("skipped"):
    out.append([f"base_train d{depth} --mc", "torchrun --nproc_per_node=1", "-", "-", "-", "-", "-", "-", secs,
                status])
else:
    out.append(train_row("torchrun", f"base_train d{depth} --mc", "torchrun --nproc_per_node=1"))
status, secs = rows.get("chat", ["not run", "0"])
data = info("chat")
reopen = (work / "logs" / "chat-reopen.log")
held = re.search(r"session 'gpu-check' \([^)]*\): (\d+) tokens of history", reopen.read_text()) if reopen.is_file() else None
history = int(held.group(1)) if held else 0
if status == "ok" and history < 10 * seq:
    status = f"FAILED: the session holds {history} tokens, under 10x the {seq}-token window"
    (work / "chat.failed").write_text(status)
peak = f"{data['peak_mib']:,.0f} ({data['peak_kind']})" if data else "-"
counts = f"{data['graphs']}/{data['graph_breaks']}/{data['recompiles']}" if data else "-"
out.append([f"chat_cli --mc, prompt 10x window ({history:,} tokens stored)", "python", "-", "-", "-", "-", counts, peak,
            secs, status])
widths = [max(len(r[i]) for r in out) for i in range(len(out[0]))]
print(f"gpu_check ({dev}, depth {depth}, sequence {seq}; {total} s in all; logs in {work}/logs)")
for i, r in enumerate(out):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
[ ! -e "$WORK/chat.failed" ] || FAILED=1
if [ "$DEV" = cuda ] && [ $((SECONDS - START)) -gt 480 ]; then say "warning: took $((SECONDS - START)) s, over the 8-minute budget"; fi
exit "$FAILED"
