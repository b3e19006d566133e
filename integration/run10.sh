#!/usr/bin/env bash
# The single-GPU nanochat recipe, with or without MegaContext: depth 12, ~3.1B pretraining tokens,
# every stage (tokenizer, base, mid, SFT, evals, report) in the patched nanochat at the pin.
#
#   bash integration/run10.sh --gpu 5090|h100 [--mc] [MegaContext knobs...] [--dry-run]
#
#   --gpu 5090   32 GB class cards (5090, A6000): device batch 16, 5,900 iterations of 524,288 tokens
#   --gpu h100   80 GB: the device batch doubles and the iterations halve, for the same token budget
#   --dry-run    print the commands, run nothing
#
# The pretraining shards come from the token budget (iterations x batch) by upstream speedrun.sh's
# arithmetic (megacontext_plugin/data/shards.py), plus the validation shard. Every command, its output
# and the background download's are appended to $NANOCHAT_BASE_DIR/report/log.txt (`tail -f` it); the
# download's also to $NANOCHAT_BASE_DIR/dataset_download.log.
# Sources .mc_env (integration/mc_setup writes it: W&B, HF and OTEL settings carry across every
# stage). WANDB_RUN names the W&B run (default: dummy = no W&B); NANOCHAT_BASE_DIR holds data and
# checkpoints (default ~/.cache/nanochat). The training and eval stages get every MegaContext
# argument you pass; without --mc the run is upstream's. The plugin is the one in .venv (mc_setup installs
# this checkout), or MEGACONTEXT_PLUGIN (a path, a wheel or a pip spec), installed into .venv first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOL=run10
. "$ROOT/integration/lib.sh"

GPU=""
DRY=0
MC_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) [ $# -ge 2 ] || die "--gpu needs a value: 5090 or h100"; GPU=$2; shift 2 ;;
        --gpu=*) GPU=${1#--gpu=}; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) MC_ARGS+=("$1"); shift ;;
    esac
done
case "$GPU" in
    5090) DBS=16; TOTAL=524288; ITERS=5900; SFT_DBS=4 ;;
    h100) DBS=32; TOTAL=1048576; ITERS=2950; SFT_DBS=8 ;;
    "") die "which GPU? --gpu 5090 or --gpu h100" ;;
    *) die "unknown --gpu '$GPU' (expected 5090 or h100)" ;;
esac
mc_require_flag ${MC_ARGS[@]+"${MC_ARGS[@]}"}
mc_load_env
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export OMP_NUM_THREADS=1 PYTHONPATH="$NC"
[ ${#MC_ARGS[@]} -gt 0 ] && export NANOCHAT_PLUGINS=megacontext || export NANOCHAT_PLUGINS=none
RUN=${WANDB_RUN:-dummy}
MC=(${MC_ARGS[@]+"${MC_ARGS[@]}"})  # the MegaContext arguments every training and eval stage gets

run() {  # run CMD...: echo it; execute it in the nanochat tree unless --dry-run, its output also in the log
    echo "+ $*"
    [ "$DRY" = 1 ] && return
    echo "+ $*" >>"$MC_LOG"
    (cd "$NC" && PYTHONUNBUFFERED=1 "$@") 2>&1 | tee -a "$MC_LOG" || die "failed: $1 ${*:2:2} (its output: $MC_LOG)"
}
if [ "$DRY" = 0 ]; then
    mkdir -p "$NANOCHAT_BASE_DIR"
    mc_log_start "$NANOCHAT_BASE_DIR"  # from here every line is also in $NANOCHAT_BASE_DIR/report/log.txt
    mc_ensure_nanochat gpu
    mc_use_plugin
else
    mc_use_plugin --dry-run
fi
if [ -x "$PY" ]; then mc_check_knobs ${MC[@]+"${MC[@]}"}; fi  # a bad knob fails now, not hours later
say "--gpu $GPU, depth 12, $ITERS iterations x $TOTAL tokens; MegaContext: ${MC[*]:-off}; run '$RUN'"
# the shards the token budget reads (upstream's arithmetic; any python3: the helper is standard library only)
PLAN_PY=$PY; [ -x "$PLAN_PY" ] || PLAN_PY=python3
plan() { PYTHONPATH="$ROOT" "$PLAN_PY" -m megacontext_plugin.data.shards --tokens $((ITERS * TOTAL)) "$@"; }
SHARDS=$(plan --count) || die "could not compute the number of shards (above)"
say "pretraining shards: $(plan)"

run "$PY" -m nanochat.report reset
run "$PY" -m nanochat.dataset -n 8
echo "+ $PY -m nanochat.dataset -n $SHARDS &"
if [ "$DRY" = 0 ]; then  # its output: the log (not the terminal, where tok_train prints) and dataset_download.log
    echo "+ $PY -m nanochat.dataset -n $SHARDS &" >>"$MC_LOG"
    ( set -o pipefail; (cd "$NC" && PYTHONUNBUFFERED=1 "$PY" -m nanochat.dataset -n "$SHARDS") 2>&1 \
        | tee -a "$NANOCHAT_BASE_DIR/dataset_download.log" >>"$MC_LOG" ) & DOWNLOAD=$!
    say "downloading $SHARDS shards in the background: progress in $MC_LOG and $NANOCHAT_BASE_DIR/dataset_download.log"
fi
run "$PY" -m scripts.tok_train --max-chars=2000000000 --vocab-size=65536
run "$PY" -m scripts.tok_eval
if [ "$DRY" = 0 ]; then
    say "waiting for the dataset download"
    wait "$DOWNLOAD" || die "the dataset download failed (its output: $MC_LOG)"
    have=$(find "$NANOCHAT_BASE_DIR/base_data" -maxdepth 1 -name 'shard_*.parquet' | wc -l)
    [ "$have" -ge "$SHARDS" ] \
        || die "only $have of $SHARDS shards in $NANOCHAT_BASE_DIR/base_data (see $MC_LOG); run again: downloaded shards are kept"
fi
run "$PY" -m scripts.base_train --depth=12 --device-batch-size=$DBS --total-batch-size=$TOTAL \
    --num-iterations=$ITERS --run="$RUN" ${MC[@]+"${MC[@]}"}
run "$PY" -m scripts.base_loss --device-batch-size=$DBS
run "$PY" -m scripts.base_eval
run curl -sSL -o "$NANOCHAT_BASE_DIR/identity_conversations.jsonl" \
    https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl
run "$PY" -m scripts.mid_train --device-batch-size=$DBS --run="$RUN" ${MC[@]+"${MC[@]}"}
run "$PY" -m scripts.chat_eval -i mid ${MC[@]+"${MC[@]}"}
run "$PY" -m scripts.chat_sft --device-batch-size=$SFT_DBS --run="$RUN" ${MC[@]+"${MC[@]}"}
run "$PY" -m scripts.chat_eval -i sft ${MC[@]+"${MC[@]}"}
run "$PY" -m nanochat.report generate
say "done; report in $NANOCHAT_BASE_DIR/report/report.md"
