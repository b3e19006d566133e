# Shared by runcpu.sh, runcpu_quality.sh and run10.sh (sourced, not run): messages, .mc_env, the patched
# nanochat, the MegaContext argument checks, the run's log and the CPU recipes' stages. The caller sets ROOT
# (the repository) and TOOL (its name).

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

mc_load_env() {  # source .mc_env (integration/mc_setup writes it); set NC (patched nanochat) and PY
    if [ -f "$ROOT/.mc_env" ]; then set -a; . "$ROOT/.mc_env"; set +a; fi
    NC=${MC_NANOCHAT:-$ROOT/.mc/nanochat}
    PY="$ROOT/.venv/bin/python"
}

mc_ensure_nanochat() {  # cpu|gpu: run integration/mc_setup when .venv or the patched tree is missing
    if [ ! -x "$PY" ] || ! "$PY" -m megacontext_plugin.cli nanochat verify "$NC" >/dev/null 2>&1; then
        say "no patched nanochat at $NC yet: running integration/mc_setup --$1"
        bash "$ROOT/integration/mc_setup" "--$1"
    fi
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
}
