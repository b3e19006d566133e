#!/usr/bin/env bash
# nanochat's own model learning to read a working context of gists, on CPU and offline, on 2 cores in about 30
# minutes at the pin and 34 on master where the CPU computes bf16 natively (an hour and 42 minutes on an earlier,
# slower machine, before D56's longer chat stages; the goal is 45 minutes; docs/research-log.md): nanochat's scripts
# (tok_train, base_train, mid_train, chat_sft) on the long-context corpus, then the post-run validation and the report.
#
#   bash integration/runcpu_quality.sh [--mc] [MegaContext knobs...] [--fresh]
#
# The pretraining corpus (`megacontext corpus`): planted pass keys, key/value recall, copies and
# chunks of the standard library's Python source (a seeded split of its files; the run trains on
# those listed in corpus_train_files.txt). base_train runs twice on it, as nanochat resumes:
#   1. plain: full attention at a short window on short documents (retrieval is learned first, with
#      few distractors);
#   2. resumed at the long window on documents of exactly that many tokens, so that each training
#      row is one document whose answer ends the row: MC_Q_LONG_PLAIN_STEPS plain steps first (none
#      by default), then, with --mc, the MegaContext steps (--mc_plain_steps names both plain
#      stretches, the curriculum anneals over the rest).
# Without --mc the same two invocations train the same model plainly: the baseline.
# Then mid_train (at a tenth of upstream's learning rate, MC_Q_MID_LR_FRAC, which keeps the base model's
# retrieval) and chat_sft on `megacontext tasks` conversations longer than the window (with --mc every second
# step of both plain too, as in base_train: the reader learns the chat formats with the whole conversation in
# view, D56), base_eval (with
# --mc: the MegaContext validation), with --mc the SFT checkpoint's validation, and the report.
# Everything lands in $MC_RUNCPU_DIR (default .mc/runcpu_quality); what it prints also in its
# report/log.txt. Sizes come from the MC_Q_* variables below (the defaults are the recipe; the tests
# shrink them), recorded in recipe_sizes.txt.
# A run that stopped part-way is continued by the same command with the same sizes (D50): the stages
# its ledger (runcpu_quality_stages.txt) lists are skipped, one line each, the report is kept, and each
# base_train phase resumes from its latest whole checkpoint (saved every MC_SAVE_EVERY steps, default
# 250; once a phase is done only its last save stays). Otherwise (a finished run, other arguments or
# sizes, no ledger, or --fresh) the directory is wiped and every stage runs.
# MC_Q_FROM_PLAIN=DIR starts from another run's data, tokenizer and plain phase (the same sizes): the
# second phase's ablations share one plain phase.
# On nanochat master (a patched master tree in .mc/nanochat: integration/mc_setup --upstream master), which has no
# mid_train and no report: one chat_sft stage of MC_Q_CHAT_STEPS steps at mid's learning rate on the same
# conversations (those that fit one row: master's dataset cache, D52), and the report is the plugin's own (--mc).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOL=runcpu_quality
. "$ROOT/integration/lib.sh"

FRESH=0
ARGS=()
for arg in "$@"; do if [ "$arg" = --fresh ]; then FRESH=1; else ARGS+=("$arg"); fi; done
mc_require_flag ${ARGS[@]+"${ARGS[@]}"}
SEQ_PLAIN=${MC_Q_SEQ_PLAIN:-512}       # the plain phase's window (tokens)
SEQ=${MC_Q_SEQ:-1024}                  # the model's window from the second phase on
BUDGET=${MC_Q_BUDGET:-64}              # W: working-context entries (8x W = 512 fits the window: ΔNLL@H at 8x)
PLAIN_STEPS=${MC_Q_PLAIN_STEPS:-2200}  # optimizer steps of the plain phase (short window)
LONG_PLAIN=${MC_Q_LONG_PLAIN_STEPS:-0}  # plain steps that open the second phase (long window)
STEPS=${MC_Q_STEPS:-500}               # the second phase's steps after them (with --mc: the MegaContext steps)
BATCH_TOKENS=${MC_Q_BATCH_TOKENS:-8192}  # tokens per optimizer step of the second phase
PLAIN_BATCH_TOKENS=${MC_Q_PLAIN_BATCH_TOKENS:-8192}  # and of the plain phase (4096: 48 minutes, but a weaker reader; docs/research-log.md r3)
DEPTH=${MC_Q_DEPTH:-2}
VOCAB=${MC_Q_VOCAB:-2048}
MID_STEPS=${MC_Q_MID_STEPS:-300}      # the pin's mid_train (20 conversations a step; D56)
MID_LR_FRAC=${MC_Q_MID_LR_FRAC:-0.1}   # mid_train's --init-lr-frac: at upstream's 1.0 mid erases the base model's retrieval (D47)
SFT_STEPS=${MC_Q_SFT_STEPS:-40}
CHAT_STEPS=${MC_Q_CHAT_STEPS:-600}     # master's one chat_sft stage, for mid and SFT (15 conversations a step; D56)
# short documents: about 216 tokens each (measured at vocabulary 2,048) plus BOS and what best-fit packing crops,
# so that the plain phase never reaches the long documents; documents of exactly SEQ tokens for the second phase,
# one per row, with room to spare (the dataloader never wraps around to the short ones)
WARMUP_DOCS=${MC_Q_WARMUP_DOCS:-$(( PLAIN_STEPS * PLAIN_BATCH_TOKENS / 190 ))}
LONG_DOCS=${MC_Q_LONG_DOCS:-$(( (LONG_PLAIN + STEPS) * BATCH_TOKENS / SEQ * 3 / 2 ))}
MIX=${MC_Q_MIX:-passkey=0.35,recall=0.25,copy=0.1,python=0.3}
FROM_PLAIN=${MC_Q_FROM_PLAIN:-}        # a finished run's directory: its data, tokenizer and plain phase are reused
# both base_train phases save this often: about every five minutes on 2 cores (a save is some 15 MB; D50)
SAVE_EVERY=${MC_SAVE_EVERY:-250}
[[ $SAVE_EVERY =~ ^(-1|[1-9][0-9]*)$ ]] || die "MC_SAVE_EVERY=$SAVE_EVERY: expected a number of steps, or -1 (only the last)"
MC_ARGS=()
if [ ${#ARGS[@]} -gt 0 ]; then
    # the stand-in's geometry (D25): blocks of 8, a 16-token protected tail, H = 16, W = BUDGET; a one-layer
    # GistNet, LensNet at its default size (D53: the stand-in's 1 x 64 lens missed keys nanochat's could hold);
    # the curriculum anneals over the first 10% of the MC steps; no auto-batch (the steps are the recipe's);
    # any gist LensNet ranks above the typical one is opened while the budget has room (D44: this model's
    # lens ranks the key's gist first by margins under 0.1); every second step of the MegaContext phase
    # trains plainly, so the run's full attention keeps reading the whole window (D45)
    MC_ARGS=(--block_size 8 --allocator_recent_tokens 16 --mc_horizon 16 --mc_plain_every 2
             --mc_train_wc_length "$(awk "BEGIN{print $BUDGET/$SEQ}")" --mc_anneal_fraction 0.1
             --mc_auto_batch 0 --gistnet_layers 1
             --allocator_expand_threshold 0 --allocator_collapse_threshold 0.3 --mc_telemetry_every 50
             --mc_eval_lengths 2,4,8 "${ARGS[@]}")
fi

RUN_DIR=${MC_RUNCPU_DIR:-$ROOT/.mc/runcpu_quality}
PLAIN_NAME=$(printf '%06d' "$PLAIN_STEPS")
if [ -n "$FROM_PLAIN" ]; then  # checked before anything is wiped
    FROM_PLAIN=$(cd "$FROM_PLAIN" 2>/dev/null && pwd) || die "MC_Q_FROM_PLAIN: no such directory"
    [ "$FROM_PLAIN" != "$(realpath -m "$RUN_DIR")" ] || die "MC_Q_FROM_PLAIN is the run's own directory"
    [ -f "$FROM_PLAIN/base_checkpoints/d$DEPTH/model_$PLAIN_NAME.pt" ] \
        || die "MC_Q_FROM_PLAIN=$FROM_PLAIN holds no plain phase of $PLAIN_STEPS steps at depth $DEPTH"
    # its long documents are reused: more steps than they hold would wrap nanochat's dataloader around to the
    # short documents, whose rows do not end with an answer
    source_docs=$(sed -n 's/^long_docs=//p' "$FROM_PLAIN/recipe_sizes.txt" 2>/dev/null)
    [ -n "$source_docs" ] || die "MC_Q_FROM_PLAIN=$FROM_PLAIN has no recipe_sizes.txt (not a runcpu_quality.sh run)"
    held=$(( source_docs * 2 / 3 * SEQ / BATCH_TOKENS ))
    [ $((LONG_PLAIN + STEPS)) -le "$held" ] \
        || die "MC_Q_LONG_PLAIN_STEPS + MC_Q_STEPS = $((LONG_PLAIN + STEPS)): the long documents of $FROM_PLAIN hold about $held steps"
    LONG_DOCS=$source_docs
fi
mc_load_env
mc_ensure_nanochat cpu
mc_use_plugin
mc_check_knobs ${MC_ARGS[@]+"${MC_ARGS[@]}"}
UPSTREAM=$(mc_upstream)
[ -n "$UPSTREAM" ] || die "$NC is not a patched nanochat at a supported commit (megacontext nanochat verify $NC)"
if [ "$UPSTREAM" = master ]; then TASKS=task_data; else TASKS=tasks; fi  # where each reads the conversations
if [ -n "$FROM_PLAIN" ]; then  # a plain phase of the other nanochat is another model (a run before this line was the pin's)
    from_upstream=$(sed -n 's/^upstream=//p' "$FROM_PLAIN/recipe_sizes.txt"); from_upstream=${from_upstream:-pin}
    [ "$from_upstream" = "$UPSTREAM" ] || die "MC_Q_FROM_PLAIN=$FROM_PLAIN was trained on nanochat's $from_upstream, this tree is $UPSTREAM"
fi
# what the run trains: with the arguments, the identity of a run (MC_SAVE_EVERY and the thread count are not:
# they change when it saves and how fast it computes, not what it trains)
SIZES=$(printf '%s\n' "seq_plain=$SEQ_PLAIN" "seq=$SEQ" "budget=$BUDGET" "plain_steps=$PLAIN_STEPS" \
    "long_plain_steps=$LONG_PLAIN" "steps=$STEPS" "plain_batch_tokens=$PLAIN_BATCH_TOKENS" "batch_tokens=$BATCH_TOKENS" \
    "depth=$DEPTH" "vocab=$VOCAB" "mid_steps=$MID_STEPS" "mid_lr_frac=$MID_LR_FRAC" "sft_steps=$SFT_STEPS" \
    "chat_steps=$CHAT_STEPS" "warmup_docs=$WARMUP_DOCS" "long_docs=$LONG_DOCS" "mix=$MIX" "from_plain=$FROM_PLAIN" \
    "upstream=$UPSTREAM")

other_sizes() {  # what the run in RUN_DIR was sized otherwise, from its recipe_sizes.txt: "key=old (now new), ..."
    local kv old
    while IFS= read -r kv; do
        old=$(grep -m 1 "^${kv%%=*}=" "$RUN_DIR/recipe_sizes.txt" 2>/dev/null) || old="${kv%%=*} unset"
        [ "$old" = "$kv" ] || printf '%s (now %s)\n' "$old" "${kv#*=}"
    done <<<"$SIZES" | paste -sd ';' | sed 's/;/, /g'
}
MC_LEDGER=$RUN_DIR/runcpu_quality_stages.txt
COMMAND="runcpu_quality.sh${ARGS[*]:+ ${ARGS[*]}}"
THIS="$COMMAND; sizes: $(paste -sd ' ' <<<"$SIZES")"  # the ledger's first line: a run continues only the same run
other_run() {  # WAS: why the run the ledger recorded as WAS (nothing: no ledger) is not this one (mc_open_run)
    if [ -z "$1" ]; then [ -z "$(ls -A "$RUN_DIR" 2>/dev/null)" ] || echo "no ledger says what it held"
    elif [ "${1%%; sizes: *}" != "$COMMAND" ]; then echo "it held a run of '${1%%; sizes: *}'"
    else echo "its run had other sizes: $(other_sizes)"; fi
}
mc_open_run "$RUN_DIR" "$THIS" other_run
[ "$MC_RESUMING" = 1 ] || echo "$SIZES" >"$RUN_DIR/recipe_sizes.txt"
export NANOCHAT_BASE_DIR="$RUN_DIR" NANOCHAT_TASK_DIR="$RUN_DIR/tasks"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} PYTHONPATH="$NC"
[ ${#MC_ARGS[@]} -gt 0 ] && export NANOCHAT_PLUGINS=megacontext || export NANOCHAT_PLUGINS=none
RUN=${WANDB_RUN:-dummy}
MODEL=(--device-type cpu)

START=$SECONDS
say "output in $RUN_DIR; MegaContext: $([ ${#MC_ARGS[@]} -gt 0 ] && echo "on (${MC_ARGS[*]})" || echo off)"
DATA="$RUN_DIR/base_data"
CK="$RUN_DIR/base_checkpoints/d$DEPTH"
BASE=(--run "$RUN" --depth "$DEPTH" --head-dim 64 --window-pattern L --save-every "$SAVE_EVERY"
      --eval-tokens 65536 --core-metric-every -1 --sample-every -1)
WARM_SHARDS=$(( (WARMUP_DOCS + 1999) / 2000 ))
LONG_SHARDS=$(( (LONG_DOCS + 999) / 1000 ))

# The multi-step stages are shell functions run by `stage`, which records them only once every step succeeded.
# They redo their work whole, so a try lost part-way leaves nothing a re-run trips on. (Inside them errexit is
# off: `stage` runs its command as an `if` condition, hence the explicit `|| return 1`.)
write_tasks() {  # the chat conversations, as many as the chat stages read (both upstreams end a stage with its
    # data's epoch): on master in its dataset cache, those that fit its rows by the run's tokenizer (D52), 15 a step
    # (a row of 1,024 tokens packs about 3.5); on the pin NANOCHAT_TASK_DIR's files, 20 a mid step beside its mixture
    if [ "$UPSTREAM" = master ]; then
        "$PY" -m megacontext_plugin.cli tasks --upstream master --out "$RUN_DIR" --max-seq-len "$SEQ" \
            --mid-train $((CHAT_STEPS * 10)) --sft-train $((CHAT_STEPS * 5)) --tokenizer "$RUN_DIR/tokenizer"
    else
        "$PY" -m megacontext_plugin.cli tasks --out "$NANOCHAT_TASK_DIR" --max-seq-len "$SEQ" --mid-train $((MID_STEPS * 20))
    fi
}
copy_plain_phase() {  # MC_Q_FROM_PLAIN's data, tokenizer, train-file list and last plain checkpoint; the conversations
    # are written afresh (seconds): their number follows this run's chat stages, and a source's cache from before D52
    # holds conversations master's loader cannot row
    local what
    for what in base_data tokenizer; do
        rm -rf "${RUN_DIR:?}/$what" && cp -r "$FROM_PLAIN/$what" "$RUN_DIR/" || return 1
    done
    write_tasks || return 1
    cp "$FROM_PLAIN/corpus_train_files.txt" "$RUN_DIR/" && mkdir -p "$CK" \
        && cp "$FROM_PLAIN/base_checkpoints/d$DEPTH"/*_"$PLAIN_NAME"* "$CK/"
}
long_documents() {  # nanochat reads shards in name order, the last one as validation: the long documents
    # (written after the tokenizer, which sets their length in tokens) are renumbered after the short ones, whose
    # validation shard goes (the tokenizer, trained before, held it out). Shards from WARM_SHARDS on are that
    # validation shard or long documents an earlier try moved in: removed first
    local f i
    for f in "$DATA"/shard_*.parquet; do
        [ -e "$f" ] || continue
        i=${f##*shard_}; i=$((10#${i%.parquet}))
        [ "$i" -lt "$WARM_SHARDS" ] || rm -f "$f" || return 1
    done
    "$PY" -m megacontext_plugin.cli corpus --out "$RUN_DIR/long_data" --shards $((LONG_SHARDS + 1)) \
        --docs-per-shard $(( (LONG_DOCS + LONG_SHARDS - 1) / LONG_SHARDS )) --seed 1 --row-groups 8 --mix "$MIX" \
        --doc-tokens "$SEQ" --tokenizer "$RUN_DIR/tokenizer" || return 1
    for f in "$RUN_DIR"/long_data/shard_*.parquet; do
        i=${f##*shard_}; i=$((10#${i%.parquet}))
        mv "$f" "$DATA/$(printf 'shard_%05d.parquet' $((WARM_SHARDS + i)))" || return 1
    done
    rmdir "$RUN_DIR/long_data"
}
phase_two_latest() {  # the second phase's latest whole save: past the plain phase, and with --mc its
    # megacontext_ file too (written after the optimizer's: without it the aux nets' state is lost)
    local s
    mc_checkpoint_steps "$CK" optim | while read -r s; do
        [ "$s" -gt "$PLAIN_STEPS" ] || continue
        [ ${#MC_ARGS[@]} -eq 0 ] || [ -f "$CK/megacontext_$(printf %06d "$s").pt" ] || continue
        echo "$s"
    done | tail -n 1
}

report_reset() {  # nanochat's report starts over (master has none: the plugin writes its own at the validations)
    [ "$UPSTREAM" = master ] || mc_skip "report reset" || stage "report reset" "$PY" -m nanochat.report reset
}

# each stage is skipped when the run this one continues completed it (mc_skip says so)
if [ -n "$FROM_PLAIN" ]; then  # the same data, tokenizer and plain phase as that run (ablations of the second phase)
    mc_skip "plain phase from $FROM_PLAIN" "$CK/model_$PLAIN_NAME.pt" \
        || stage "plain phase from $FROM_PLAIN" copy_plain_phase
    report_reset
else
    # the short documents first (their corpus replaces every shard it wrote before, long ones included)
    mc_skip "data (short documents)" "$RUN_DIR/corpus_train_files.txt" \
        || stage "data (short documents)" "$PY" -m megacontext_plugin.cli corpus --out "$DATA" \
            --shards $((WARM_SHARDS + 1)) --docs-per-shard $(( (WARMUP_DOCS + WARM_SHARDS - 1) / WARM_SHARDS )) \
            --row-groups 16 --mix "$MIX" --min-chars 400 --max-chars 1400 \
            --train-files-out "$RUN_DIR/corpus_train_files.txt"
    report_reset
    mc_skip "tokenizer" "$RUN_DIR/tokenizer/token_bytes.pt" \
        || stage "tokenizer" "$PY" -m scripts.tok_train --max-chars 4000000 --vocab-size "$VOCAB"
    mc_skip "data (documents of $SEQ tokens)" "$DATA/$(printf 'shard_%05d.parquet' $((WARM_SHARDS + LONG_SHARDS)))" \
        || stage "data (documents of $SEQ tokens)" long_documents
    mc_skip "tasks" "$RUN_DIR/$TASKS" || stage "tasks" write_tasks
    NAME="base (plain, window $SEQ_PLAIN)"
    if ! mc_skip "$NAME" "$CK/model_$PLAIN_NAME.pt"; then
        FROM=()
        if STEP=$(mc_latest_step "$CK" optim) && [ -n "$STEP" ]; then
            say "$NAME: resuming from step $STEP, the latest checkpoint in $CK"
            FROM=(--resume-from-step "$STEP")
        fi
        stage "$NAME" "$PY" -m scripts.base_train "${MODEL[@]}" "${BASE[@]}" \
            --total-batch-size "$PLAIN_BATCH_TOKENS" --max-seq-len "$SEQ_PLAIN" \
            --device-batch-size $((PLAIN_BATCH_TOKENS / SEQ_PLAIN)) --num-iterations "$PLAIN_STEPS" --warmdown-ratio 0 \
            --eval-every $(( PLAIN_STEPS / 4 > 0 ? PLAIN_STEPS / 4 : 1 )) ${FROM[@]+"${FROM[@]}"}
        mc_prune_checkpoints "$CK" 1  # its last step stays: the second phase resumes from it
    fi
fi
TOTAL=$((PLAIN_STEPS + LONG_PLAIN + STEPS))
NAME="base ($([ ${#MC_ARGS[@]} -gt 0 ] && echo MegaContext || echo plain), window $SEQ)"
if ! mc_skip "$NAME" --checkpoint "$CK"; then
    AT=$PLAIN_STEPS  # the plain phase's last step, or this phase's own latest save when a lost try left one
    STEP=$(phase_two_latest)
    if [ -n "$STEP" ]; then
        say "$NAME: resuming from step $STEP, the latest checkpoint in $CK"
        AT=$STEP
    fi
    stage "$NAME" "$PY" -m scripts.base_train "${MODEL[@]}" "${BASE[@]}" --max-seq-len "$SEQ" \
        --total-batch-size "$BATCH_TOKENS" --device-batch-size $((BATCH_TOKENS / SEQ)) --num-iterations "$TOTAL" \
        --resume-from-step "$AT" --warmdown-ratio "$(awk "BEGIN{print 0.5 * $STEPS / $TOTAL}")" \
        --eval-every $((LONG_PLAIN + STEPS)) ${MC_ARGS[@]+"${MC_ARGS[@]}" --mc_plain_steps $((PLAIN_STEPS + LONG_PLAIN))}
    # the run's last step stays, and the plain phase's (MC_Q_FROM_PLAIN runs copy it)
    mc_prune_checkpoints "$CK" 1 "$PLAIN_STEPS"
fi
if [ "$UPSTREAM" = master ]; then
    # no mid_train: one chat_sft stage on the mid and SFT conversations, as long as both, at mid's learning rate
    # (upstream's 0.8 erases the base model's retrieval, D47); MMLU and GSM8K are the cache's placeholders, untrained
    mc_skip "sft" --checkpoint "$RUN_DIR/chatsft_checkpoints/d$DEPTH" \
        || stage "sft" "$PY" -m scripts.chat_sft "${MODEL[@]}" --run "$RUN" \
            --max-seq-len "$SEQ" --device-batch-size 4 --total-batch-size $((4 * SEQ)) \
            --num-iterations "$CHAT_STEPS" --init-lr-frac "$MID_LR_FRAC" --eval-every "$CHAT_STEPS" \
            --eval-tokens 16384 --chatcore-every -1 --mmlu-epochs 0 --gsm8k-epochs 0 ${MC_ARGS[@]+"${MC_ARGS[@]}"}
    # master's CORE reads its own downloaded bundle: bits per byte, and with --mc the validation
    mc_skip "base eval" || stage "base eval" "$PY" -m scripts.base_eval "${MODEL[@]}" \
        --eval bpb --split-tokens 65536 --device-batch-size 4 ${MC_ARGS[@]+"${MC_ARGS[@]}"}
else
    mc_skip "mid" --checkpoint "$RUN_DIR/mid_checkpoints/d$DEPTH" \
        || stage "mid" "$PY" -m scripts.mid_train "${MODEL[@]}" --run "$RUN" --dtype float32 --max-seq-len "$SEQ" \
            --device-batch-size 4 --total-batch-size $((4 * SEQ)) --num-iterations "$MID_STEPS" --eval-every -1 \
            --eval-tokens 16384 --init-lr-frac "$MID_LR_FRAC" ${MC_ARGS[@]+"${MC_ARGS[@]}"}
    mc_skip "sft" --checkpoint "$RUN_DIR/chatsft_checkpoints/d$DEPTH" \
        || stage "sft" "$PY" -m scripts.chat_sft "${MODEL[@]}" --run "$RUN" --dtype float32 --device-batch-size 4 \
            --target-examples-per-step 8 --num-iterations "$SFT_STEPS" --eval-every "$SFT_STEPS" --eval-steps 4 \
            --eval-metrics-every -1 ${MC_ARGS[@]+"${MC_ARGS[@]}"}
    # upstream's CORE on a local one-task bundle (its own downloads)
    "$PY" -c "from megacontext_plugin.data.core_bundle import write_core_bundle; write_core_bundle('$RUN_DIR')"
    mc_skip "base eval" || stage "base eval" "$PY" -m scripts.base_eval ${MC_ARGS[@]+"${MC_ARGS[@]}"}
fi
# upstream's chat_eval downloads its tasks: offline, the SFT checkpoint gets the MegaContext validation only
# (NANOCHAT_DIR the patched tree: the caller's may name the unpatched source mc_setup copied)
[ ${#MC_ARGS[@]} -eq 0 ] || mc_skip "sft eval" \
    || stage "sft eval" env NANOCHAT_DIR="$NC" "$PY" -m megacontext_plugin.cli eval validate \
        --checkpoint "$RUN_DIR/chatsft_checkpoints/d$DEPTH"
if [ "$UPSTREAM" = master ]; then
    if [ ${#MC_ARGS[@]} -gt 0 ]; then say "report (the plugin's own: master writes none): $RUN_DIR/report/report.md"
    else say "no report: master writes none, and without --mc there is no MegaContext validation (what the stages printed: $RUN_DIR/report/log.txt)"; fi
    say "done in $((SECONDS - START)) s: checkpoints in $RUN_DIR/{base,chatsft}_checkpoints"
else
    stage "report" "$PY" -m nanochat.report generate
    say "report: $RUN_DIR/report/report.md"
    say "done in $((SECONDS - START)) s: checkpoints in $RUN_DIR/{base,mid,chatsft}_checkpoints"
fi
say "evaluate: .venv/bin/megacontext eval long-context --checkpoint $RUN_DIR/base_checkpoints/d$DEPTH --budget $BUDGET"
