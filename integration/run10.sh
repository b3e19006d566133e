#!/usr/bin/env bash
# The single-GPU nanochat recipe, with or without MegaContext: depth 12, ~3.1B pretraining tokens,
# every stage (tokenizer, base, mid, SFT, evals, report) in the patched nanochat at the pin.
#
#   bash integration/run10.sh --gpu 5090|h100 [--mc] [MegaContext knobs...] [--fresh] [--dry-run]
#
#   --gpu 5090   32 GB class cards (5090, A6000): device batch 16, 5,900 iterations of 524,288 tokens
#   --gpu h100   80 GB: the device batch doubles and the iterations halve, for the same token budget
#   --fresh      start over: remove the earlier run's tokenizer, d12 checkpoints and ledger (shards stay)
#   --dry-run    print the commands (and what a re-run would skip or resume), run nothing
#
# Re-run with the same arguments and NANOCHAT_BASE_DIR, it continues: the stages the last run completed
# (listed in $NANOCHAT_BASE_DIR/run10_stages.txt) are skipped, the report is kept, and base_train resumes
# from its latest checkpoint (--resume-from-step). base_train saves every MC_SAVE_EVERY steps (default 500
# on a 5090, 250 on an H100: every 262M tokens; -1: only the last step, as upstream), keeping the two latest
# saves while it trains and the last one after; mid_train and chat_sft save at their end only, so an
# interrupted one starts again from its beginning.
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
FRESH=0
MC_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) [ $# -ge 2 ] || die "--gpu needs a value: 5090 or h100"; GPU=$2; shift 2 ;;
        --gpu=*) GPU=${1#--gpu=}; shift ;;
        --dry-run) DRY=1; shift ;;
        --fresh) FRESH=1; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) MC_ARGS+=("$1"); shift ;;
    esac
done
case "$GPU" in
    5090) DBS=16; TOTAL=524288; ITERS=5900; SFT_DBS=4; SAVE_EVERY=500 ;;
    h100) DBS=32; TOTAL=1048576; ITERS=2950; SFT_DBS=8; SAVE_EVERY=250 ;;
    "") die "which GPU? --gpu 5090 or --gpu h100" ;;
    *) die "unknown --gpu '$GPU' (expected 5090 or h100)" ;;
esac
SAVE_EVERY=${MC_SAVE_EVERY:-$SAVE_EVERY}
[[ $SAVE_EVERY =~ ^(-1|[1-9][0-9]*)$ ]] || die "MC_SAVE_EVERY=$SAVE_EVERY: expected a number of steps, or -1 (only the last)"
mc_require_flag ${MC_ARGS[@]+"${MC_ARGS[@]}"}
mc_load_env
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export OMP_NUM_THREADS=1 PYTHONPATH="$NC"
[ ${#MC_ARGS[@]} -gt 0 ] && export NANOCHAT_PLUGINS=megacontext || export NANOCHAT_PLUGINS=none
RUN=${WANDB_RUN:-dummy}
MC=(${MC_ARGS[@]+"${MC_ARGS[@]}"})  # the MegaContext arguments every training and eval stage gets

run() {  # run NAME CMD...: echo CMD; execute it in the nanochat tree unless --dry-run, its output also in the
    # log; then NAME is done (the ledger). `mc_skip NAME || run NAME ...` skips what an earlier run completed
    local name=$1; shift
    echo "+ $*"
    [ "$DRY" = 1 ] && return
    echo "+ $*" >>"$MC_LOG"
    (cd "$NC" && PYTHONUNBUFFERED=1 "$@") 2>&1 | tee -a "$MC_LOG" || die "failed: $1 ${*:2:2} (its output: $MC_LOG)"
    mc_mark "$name"
}

if [ "$DRY" = 0 ]; then
    mkdir -p "$NANOCHAT_BASE_DIR"
    mc_log_start "$NANOCHAT_BASE_DIR"  # from here every line is also in $NANOCHAT_BASE_DIR/report/log.txt
fi
# continue or start over: what an earlier run in NANOCHAT_BASE_DIR left (its shards are kept either way)
B=$NANOCHAT_BASE_DIR
BASE_CK=$B/base_checkpoints/d12 MID_CK=$B/mid_checkpoints/d12 SFT_CK=$B/chatsft_checkpoints/d12
OUTPUTS=("$B/run10_stages.txt" "$B/tokenizer" "$BASE_CK" "$MID_CK" "$SFT_CK")
THIS="run10.sh --gpu $GPU${MC[*]:+ ${MC[*]}}"  # the ledger's first line: a run continues only the same run
MC_LEDGER=$B/run10_stages.txt
if [ "$FRESH" = 1 ]; then
    mc_start_over "$DRY" "${OUTPUTS[@]}"
elif [ -f "$MC_LEDGER" ]; then
    WAS=$(mc_ledger_command "$MC_LEDGER")
    [ "$WAS" = "$THIS" ] || die "$B holds a run started as '$WAS': run that to continue it, or add --fresh to start over"
    MC_RESUMING=1
    say "continuing the run in $B (its stages: $MC_LEDGER; --fresh starts over)"
else
    for out in "${OUTPUTS[@]:1}"; do
        [ ! -e "$out" ] || die "$out is from a run with no ledger ($MC_LEDGER): add --fresh to start over (it removes it), or use another NANOCHAT_BASE_DIR"
    done
fi
if [ "$DRY" = 0 ] && [ "$MC_RESUMING" = 0 ]; then echo "$THIS" >"$MC_LEDGER"; fi

if [ "$DRY" = 0 ]; then
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

mc_skip "report reset" || run "report reset" "$PY" -m nanochat.report reset  # a continued run keeps its report
run "" "$PY" -m nanochat.dataset -n 8  # the downloads run every time: a shard already there is kept
echo "+ $PY -m nanochat.dataset -n $SHARDS &"
if [ "$DRY" = 0 ]; then  # its output: the log (not the terminal, where tok_train prints) and dataset_download.log
    echo "+ $PY -m nanochat.dataset -n $SHARDS &" >>"$MC_LOG"
    ( set -o pipefail; (cd "$NC" && PYTHONUNBUFFERED=1 "$PY" -m nanochat.dataset -n "$SHARDS") 2>&1 \
        | tee -a "$NANOCHAT_BASE_DIR/dataset_download.log" >>"$MC_LOG" ) & DOWNLOAD=$!
    say "downloading $SHARDS shards in the background: progress in $MC_LOG and $NANOCHAT_BASE_DIR/dataset_download.log"
fi
mc_skip tok_train "$B/tokenizer/token_bytes.pt" \
    || run tok_train "$PY" -m scripts.tok_train --max-chars=2000000000 --vocab-size=65536
mc_skip tok_eval || run tok_eval "$PY" -m scripts.tok_eval
if [ "$DRY" = 0 ]; then
    say "waiting for the dataset download"
    wait "$DOWNLOAD" || die "the dataset download failed (its output: $MC_LOG)"
    have=$(find "$NANOCHAT_BASE_DIR/base_data" -maxdepth 1 -name 'shard_*.parquet' | wc -l)
    [ "$have" -ge "$SHARDS" ] \
        || die "only $have of $SHARDS shards in $NANOCHAT_BASE_DIR/base_data (see $MC_LOG); run again: downloaded shards are kept"
fi
if ! mc_skip base_train --checkpoint "$BASE_CK"; then
    FROM=()  # a checkpoint here is this run's (the ledger says so; --fresh removed any other): continue from it
    if [ "$FRESH" = 0 ] && STEP=$(mc_latest_step "$BASE_CK" optim) && [ -n "$STEP" ]; then
        say "base_train: resuming from step $STEP, the latest checkpoint in $BASE_CK"
        FROM=(--resume-from-step="$STEP")
    fi
    if [ "$DRY" = 0 ] && [ "$SAVE_EVERY" != -1 ]; then  # a save is the model and its optimizer (GBs at depth
        # 12): while base_train runs, keep the two latest (the older of them is whole while the next is written)
        ( trap 'kill $NAP 2>/dev/null; exit 0' TERM
          while kill -0 $$ 2>/dev/null; do mc_prune_checkpoints "$BASE_CK" 2; sleep 60 & NAP=$!; wait $NAP; done
        ) >/dev/null 2>&1 &
        PRUNER=$!
        trap 'kill "$PRUNER" 2>/dev/null || true' EXIT  # base_train failed: the pruner stops with the script
    fi
    run base_train "$PY" -m scripts.base_train --depth=12 --device-batch-size=$DBS --total-batch-size=$TOTAL \
        --num-iterations=$ITERS --save-every=$SAVE_EVERY ${FROM[@]+"${FROM[@]}"} --run="$RUN" ${MC[@]+"${MC[@]}"}
    if [ -n "${PRUNER:-}" ]; then kill "$PRUNER" 2>/dev/null || true; wait "$PRUNER" 2>/dev/null || true; trap - EXIT; fi
    [ "$DRY" = 1 ] || mc_prune_checkpoints "$BASE_CK" 1  # the last step is what the next stages read
fi
mc_skip base_loss || run base_loss "$PY" -m scripts.base_loss --device-batch-size=$DBS
mc_skip base_eval || run base_eval "$PY" -m scripts.base_eval ${MC[@]+"${MC[@]}"}  # with --mc: the post-run validation and its bands
mc_skip identity_conversations "$B/identity_conversations.jsonl" \
    || run identity_conversations curl -sSL -o "$B/identity_conversations.jsonl" \
        https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl
mc_skip mid_train --checkpoint "$MID_CK" \
    || run mid_train "$PY" -m scripts.mid_train --device-batch-size=$DBS --run="$RUN" ${MC[@]+"${MC[@]}"}
mc_skip "chat_eval mid" || run "chat_eval mid" "$PY" -m scripts.chat_eval -i mid ${MC[@]+"${MC[@]}"}
mc_skip chat_sft --checkpoint "$SFT_CK" \
    || run chat_sft "$PY" -m scripts.chat_sft --device-batch-size=$SFT_DBS --run="$RUN" ${MC[@]+"${MC[@]}"}
mc_skip "chat_eval sft" || run "chat_eval sft" "$PY" -m scripts.chat_eval -i sft ${MC[@]+"${MC[@]}"}
run "" "$PY" -m nanochat.report generate  # every time: the report of every stage, this run's and the earlier
say "done; report in $NANOCHAT_BASE_DIR/report/report.md"
