#!/usr/bin/env bash
# The whole nanochat pipeline, tiny, on CPU and offline: corpus -> tokenizer -> base -> mid -> SFT
# -> chat_cli, in minutes on 2 cores. Nothing is downloaded: the pretraining shards are our seeded
# long-context corpus (planted passkeys, key/value recall, copies) and the mid/SFT conversations
# come from `megacontext tasks` (NANOCHAT_TASK_DIR).
#
#   bash integration/runcpu.sh [--mc] [MegaContext knobs...] [--fresh]
#
# With --mc every stage trains with the MegaContext controller (tiny-model defaults below; any knob
# you pass wins). Everything lands in $MC_RUNCPU_DIR (default .mc/runcpu), what it prints in its
# report/log.txt too. A run that stopped part-way is continued by the same command: the stages it
# completed (runcpu_stages.txt) are skipped and base_train resumes from its latest checkpoint (saved
# every MC_SAVE_EVERY steps, default 20). Otherwise (a finished run, other arguments, no run, or
# --fresh) the directory is wiped and every stage runs: the smoke test tests the code you have now.
# nanochat comes from .mc/nanochat (integration/mc_setup makes it; run here if it is missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOL=runcpu
. "$ROOT/integration/lib.sh"

FRESH=0
ARGS=()
for arg in "$@"; do if [ "$arg" = --fresh ]; then FRESH=1; else ARGS+=("$arg"); fi; done
mc_require_flag ${ARGS[@]+"${ARGS[@]}"}
MC_ARGS=()
if [ ${#ARGS[@]} -gt 0 ]; then
    # tiny-model defaults (sequence length 256): blocks of 8, a 32-token protected tail, H = 16; telemetry
    # every 4 steps so the report's training curves have points in every stage
    MC_ARGS=(--block_size 8 --allocator_recent_tokens 32 --mc_horizon 16 --mc_telemetry_every 4 "${ARGS[@]}")
fi
SAVE_EVERY=${MC_SAVE_EVERY:-20}
[[ $SAVE_EVERY =~ ^(-1|[1-9][0-9]*)$ ]] || die "MC_SAVE_EVERY=$SAVE_EVERY: expected a number of steps, or -1 (only the last)"

mc_load_env
mc_ensure_nanochat cpu
mc_use_plugin
mc_check_knobs ${MC_ARGS[@]+"${MC_ARGS[@]}"}
RUN_DIR=${MC_RUNCPU_DIR:-$ROOT/.mc/runcpu}
MC_LEDGER=$RUN_DIR/runcpu_stages.txt
THIS="runcpu.sh${ARGS[*]:+ ${ARGS[*]}}"  # the ledger's first line: a run continues only the same run
mc_open_run "$RUN_DIR" "$THIS"
export NANOCHAT_BASE_DIR="$RUN_DIR" NANOCHAT_TASK_DIR="$RUN_DIR/tasks"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} PYTHONPATH="$NC"
[ ${#MC_ARGS[@]} -gt 0 ] && export NANOCHAT_PLUGINS=megacontext || export NANOCHAT_PLUGINS=none
RUN=${WANDB_RUN:-dummy}
MODEL=(--device-type cpu)
SEQ=256

START=$SECONDS
say "output in $RUN_DIR; MegaContext: $([ ${#MC_ARGS[@]} -gt 0 ] && echo "on (${MC_ARGS[*]})" || echo off)"
# each stage is skipped when the run this one continues completed it (mc_skip says so)
mc_skip "data" "$RUN_DIR/base_data" || stage "data" "$PY" -m megacontext_plugin.cli corpus --out "$RUN_DIR/base_data" \
    --shards 6 --docs-per-shard 96 --max-chars 6000
mc_skip "tasks" "$NANOCHAT_TASK_DIR" \
    || stage "tasks" "$PY" -m megacontext_plugin.cli tasks --out "$NANOCHAT_TASK_DIR" --max-seq-len $SEQ
mc_skip "report reset" || stage "report reset" "$PY" -m nanochat.report reset
mc_skip "tokenizer" "$RUN_DIR/tokenizer/token_bytes.pt" \
    || stage "tokenizer" "$PY" -m scripts.tok_train --max-chars 2000000 --vocab-size 1024
if ! mc_skip "base" --checkpoint "$RUN_DIR/base_checkpoints/d4"; then
    FROM=()
    if STEP=$(mc_latest_step "$RUN_DIR/base_checkpoints/d4" optim) && [ -n "$STEP" ]; then
        say "base: resuming from step $STEP, the latest checkpoint in $RUN_DIR/base_checkpoints/d4"
        FROM=(--resume-from-step "$STEP")
    fi
    stage "base" "$PY" -m scripts.base_train "${MODEL[@]}" --run "$RUN" --depth 4 --head-dim 64 --window-pattern L \
        --max-seq-len $SEQ --device-batch-size 8 --total-batch-size 2048 --num-iterations 40 --eval-every 20 \
        --eval-tokens 8192 --core-metric-every -1 --sample-every -1 --save-every "$SAVE_EVERY" \
        ${FROM[@]+"${FROM[@]}"} ${MC_ARGS[@]+"${MC_ARGS[@]}"}
fi
mc_skip "mid" --checkpoint "$RUN_DIR/mid_checkpoints/d4" \
    || stage "mid" "$PY" -m scripts.mid_train "${MODEL[@]}" --run "$RUN" --dtype float32 --max-seq-len $SEQ \
        --device-batch-size 8 --total-batch-size 2048 --num-iterations 8 --eval-every -1 --eval-tokens 8192 \
        ${MC_ARGS[@]+"${MC_ARGS[@]}"}
mc_skip "sft" --checkpoint "$RUN_DIR/chatsft_checkpoints/d4" \
    || stage "sft" "$PY" -m scripts.chat_sft "${MODEL[@]}" --run "$RUN" --dtype float32 --device-batch-size 4 \
        --target-examples-per-step 8 --num-iterations 6 --eval-every 3 --eval-steps 4 --eval-metrics-every -1 \
        ${MC_ARGS[@]+"${MC_ARGS[@]}"}
# after training, so the report's curves cover every stage: upstream's base_eval on a local one-task CORE
# stand-in (offline), then with --mc the MegaContext validation
"$PY" -c "from megacontext_plugin.data.core_bundle import write_core_bundle; write_core_bundle('$RUN_DIR')"
mc_skip "base eval" || stage "base eval" "$PY" -m scripts.base_eval ${MC_ARGS[@]+"${MC_ARGS[@]}"}
# upstream's chat_eval downloads its tasks: offline, the SFT checkpoint gets the MegaContext validation only
# (NANOCHAT_DIR the patched tree: the caller's may name the unpatched source mc_setup copied)
[ ${#MC_ARGS[@]} -eq 0 ] || mc_skip "sft eval" \
    || stage "sft eval" env NANOCHAT_DIR="$NC" "$PY" -m megacontext_plugin.cli eval validate \
        --checkpoint "$RUN_DIR/chatsft_checkpoints/d4"
mc_skip "chat" || stage "chat" "$PY" -m scripts.chat_cli "${MODEL[@]}" --dtype float32 -t 0 \
    -p "My dog is called kel. What is my dog called?" ${MC_ARGS[@]+"${MC_ARGS[@]}"}
stage "report" "$PY" -m nanochat.report generate
say "done in $((SECONDS - START)) s: checkpoints in $RUN_DIR/{base,mid,chatsft}_checkpoints"
say "report: $RUN_DIR/report/report.md$([ ${#MC_ARGS[@]} -gt 0 ] && echo " (MegaContext validation and plots under 'Base model evaluation', PNGs in $RUN_DIR/report/megacontext)")"
[ ${#MC_ARGS[@]} -gt 0 ] && say "this was the quick smoke test: its 40-step model is not expected to use MegaContext well (the validation's arms sit near chance); integration/runcpu_quality.sh --mc is the recipe that trains nanochat's model to read gists"
exit 0
