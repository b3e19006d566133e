# Shared by runcpu.sh, runcpu_quality.sh and run10.sh (sourced, not run): messages, .mc_env, the patched
# nanochat, the MegaContext argument checks, the run's log, the CPU recipes' stages and resuming a run.
# The caller sets ROOT (the repository) and TOOL (its name).

# once mc_log_start has run, every say/die line (and every stage's output) is also appended to MC_LOG
mc_logged() { [ -z "${MC_LOG:-}" ] || echo "$*" >>"$MC_LOG"; }  # LINE: into the run's log, once it has one
die() { echo "$TOOL: error: $*" >&2; mc_logged "$TOOL: error: $*"; exit 2; }
say() { echo "$TOOL: $*"; mc_logged "$TOOL: $*"; }

mc_log_start() {  # DIR: append from now on to DIR/report/log.txt, the operating guide's `tail -f` (nanochat's
    # `report reset` removes only its own section files and report.md: the log survives it)
    mkdir -p "$1/report"
    MC_LOG="$1/report/log.txt"
    echo "== $TOOL started $(date -u +%Y-%m-%dT%H:%M:%SZ) in $1" >>"$MC_LOG"
}

mc_require_flag() {  # ARGS...: MegaContext knobs mean nothing without --mc
    if [ $# -gt 0 ]; then
        case " $* " in *" --mc "*) ;; *) die "MegaContext knobs need --mc (got: $*)" ;; esac
    fi
}

mc_load_env() {  # .mc_env's variables (integration/mc_setup writes it), where the caller has not set them; NC, PY
    local line key
    if [ -f "$ROOT/.mc_env" ]; then
        while IFS= read -r line; do  # `export KEY=VALUE`, VALUE quoted by printf %q
            [[ $line =~ ^export\ ([A-Za-z_][A-Za-z0-9_]*)= ]] || continue
            key=${BASH_REMATCH[1]}
            [ -n "${!key+set}" ] || eval "$line"
        done <"$ROOT/.mc_env"
    fi
    NC=${MC_NANOCHAT:-$ROOT/.mc/nanochat}
    PY="$ROOT/.venv/bin/python"
}

mc_ensure_nanochat() {  # cpu|gpu: run integration/mc_setup when .venv or the patched tree is missing
    if [ ! -x "$PY" ] || ! "$PY" -m megacontext_plugin.cli nanochat verify "$NC" >/dev/null 2>&1; then
        say "no patched nanochat at $NC yet: running integration/mc_setup --$1"
        bash "$ROOT/integration/mc_setup" "--$1"
    fi
}

mc_upstream() {  # which supported nanochat the patched tree $NC holds: pin or master (verify's last line names it)
    "$PY" -m megacontext_plugin.cli nanochat verify "$NC" 2>/dev/null | tail -n 1 | sed -n 's/.*, the \(pin\|master\)): .*/\1/p'
}

mc_check_knobs() {  # ARGS...: a bad knob fails now, before any work
    if [ $# -gt 0 ]; then
        "$PY" -m megacontext_plugin.cli config "$@" >/dev/null || die "bad MegaContext arguments (above)"
    fi
}

mc_use_plugin() {  # [--dry-run]: MEGACONTEXT_PLUGIN (a path, a wheel, a pip spec) wins over .venv's plugin; say which runs
    if [ -n "${MEGACONTEXT_PLUGIN:-}" ]; then
        if [ "${1:-}" = --dry-run ]; then
            say "would install the plugin from MEGACONTEXT_PLUGIN=$MEGACONTEXT_PLUGIN into .venv"
            return
        fi
        say "installing the plugin from MEGACONTEXT_PLUGIN=$MEGACONTEXT_PLUGIN into .venv (its dependencies: .venv's)"
        "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$MEGACONTEXT_PLUGIN" \
            || die "could not install MEGACONTEXT_PLUGIN=$MEGACONTEXT_PLUGIN (above)"
    fi
    # the console script, not `python -m` from this checkout: it imports what .venv has installed
    if [ -x "$ROOT/.venv/bin/megacontext" ]; then say "plugin: $("$ROOT/.venv/bin/megacontext" --version)"; fi
}

stage() {  # NAME command...: one stage of a CPU recipe, run in the patched tree, timed, its output appended
    # to $RUN_DIR/$TOOL.log (and MC_LOG) and its seconds to $RUN_DIR/stage_seconds.txt; a failing stage stops
    # the run. Python unbuffered: the logs follow the run line by line, not a buffer at a time
    local name=$1 t0=$SECONDS; shift
    say "== $name"
    if ! (cd "$NC" && PYTHONUNBUFFERED=1 "$@") 2>&1 | tee -a "$RUN_DIR/$TOOL.log" ${MC_LOG:+"$MC_LOG"}; then
        die "$name failed; the full log is $RUN_DIR/$TOOL.log"
    fi
    say "$name: $((SECONDS - t0)) s"
    echo "$name $((SECONDS - t0))" >>"$RUN_DIR/stage_seconds.txt"
    mc_mark "$name"
}

# --- resuming (run10.sh, runcpu.sh, runcpu_quality.sh): a re-run in the same directory continues the run it finds there ---
# MC_LEDGER, the run's ledger (DIR/${TOOL}_stages.txt), holds on its first line the command the run was
# started with, then the name of each stage as it completes. A re-run with the same arguments skips
# (one line each) the stages it lists, up to the first it does not; from that one on every stage runs.
MC_LEDGER=""
MC_RESUMING=0  # 1 while every stage so far was done by the run this one continues
MC_SKIPPED=0

mc_checkpoint_steps() {  # DIR [optim]: the steps DIR holds a whole nanochat checkpoint of, ascending: model_ and
    # meta_ (save_checkpoint writes them in that order); with `optim` rank 0's optim_ too (written last: what
    # base_train --resume-from-step reads). A step saved only in part (a crash mid-save) is not listed
    local f step
    for f in "$1"/meta_*.json; do
        step=${f##*/meta_}; step=${step%.json}
        case $step in ''|*[!0-9]*) continue ;; esac
        [ -f "$1/model_$step.pt" ] || continue
        if [ "${2:-}" = optim ] && [ ! -f "$1/optim_${step}_rank0.pt" ]; then continue; fi
        echo $((10#$step))
    done | sort -n
}

mc_latest_step() {  # DIR [optim]: the latest step of mc_checkpoint_steps; nothing when DIR holds none
    mc_checkpoint_steps "$@" | tail -n 1
}

mc_prune_checkpoints() {  # DIR KEEP [STEP...]: remove the resumable checkpoints in DIR but the KEEP latest and
    # each STEP named (the model, meta, optimizer and megacontext_ files of each other step); partial saves are
    # left alone
    local dir=$1 keep=$2 step s; shift 2
    for step in $(mc_checkpoint_steps "$dir" optim | awk -v keep="$keep" '{ s[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print s[i] }'); do
        case " $* " in *" $step "*) continue ;; esac
        s=$(printf %06d "$step")
        rm -f "$dir/model_$s.pt" "$dir/meta_$s.json" "$dir/optim_${s}"_rank*.pt "$dir/megacontext_$s.pt"
    done
}

mc_ledger_command() {  # LEDGER: the command the run recorded in LEDGER was started with (nothing if no ledger)
    if [ -f "$1" ]; then head -n 1 "$1"; fi
}

mc_open_run() {  # DIR THIS [DESCRIBE]: a CPU recipe's run directory. The unfinished run MC_LEDGER records as
    # THIS is continued (MC_RESUMING=1) unless FRESH=1; any other run there is wiped and THIS recorded, saying why.
    # DESCRIBE WAS prints why a ledger holding WAS (nothing: no ledger) is not this run (default: another command)
    local dir=$1 this=$2 describe=${3:-mc_other_run} was why
    was=$(mc_ledger_command "$MC_LEDGER")
    if [ "$FRESH" = 0 ] && [ -n "$was" ] && [ "$was" = "$this" ] && ! grep -qxF report "$MC_LEDGER"; then
        MC_RESUMING=1
        mc_log_start "$dir"  # say lines and every stage's output also go to $dir/report/log.txt
        say "continuing the unfinished run in $dir (--fresh starts over)"
        return
    fi
    if [ "$FRESH" = 1 ]; then why="--fresh"; elif [ "$was" = "$this" ]; then why="its run had finished"
    else why=$("$describe" "$was"); fi
    rm -rf "$dir" && mkdir -p "$dir"
    echo "$this" >"$MC_LEDGER"
    mc_log_start "$dir"
    if [ -n "$why" ]; then say "starting over in $dir: $why"; fi
}

mc_other_run() {  # WAS: mc_open_run's default reason: the command the ledger recorded (none without a ledger)
    if [ -n "$1" ]; then echo "it held a run of '$1'"; fi
}

mc_start_over() {  # DRY PATH...: remove what an earlier run left at each PATH that exists (DRY=1: say what would go)
    local dry=$1 path; shift
    for path in "$@"; do
        [ -e "$path" ] || continue
        if [ "$dry" = 1 ]; then say "--fresh: would remove $path"; else say "--fresh: removing $path"; rm -rf "$path"; fi
    done
}

mc_skip() {  # NAME [PATH | --checkpoint DIR]: true, saying so, when the run this one continues completed NAME and
    # every stage before it was skipped too; PATH (or a checkpoint in DIR) is what NAME left, which must still be
    # there. The first stage the ledger does not list is where the run resumes: it and all after it run
    [ "$MC_RESUMING" = 1 ] || return 1
    if ! grep -qxF "$1" "$MC_LEDGER"; then
        MC_RESUMING=0
        if [ "$MC_SKIPPED" -gt 0 ]; then say "resuming at $1"; fi
        return 1
    fi
    local what=""
    if [ "${2:-}" = --checkpoint ]; then
        local step
        step=$(mc_latest_step "$3")
        [ -n "$step" ] || die "$MC_LEDGER lists $1 as done but $3 holds no checkpoint: add --fresh to start over"
        what=" ($3, step $step)"
    elif [ -n "${2:-}" ]; then
        [ -e "$2" ] || die "$MC_LEDGER lists $1 as done but $2 is missing: add --fresh to start over"
        what=" ($2)"
    fi
    MC_SKIPPED=$((MC_SKIPPED + 1))
    say "skip $1: done by an earlier run$what"
}

mc_mark() {  # NAME: NAME completed: add it to the ledger (no ledger or no NAME: nothing to do; --dry-run: nothing)
    if [ -n "$MC_LEDGER" ] && [ -n "$1" ] && [ "${DRY:-0}" != 1 ]; then echo "$1" >>"$MC_LEDGER"; fi
}
