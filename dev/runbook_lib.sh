#!/usr/bin/env bash
# Shared helpers for the runbooks (speedrun.sh, run1000.sh, dev/runcpu.sh). Source it; don't run it.
#
# Every stage goes through `run_stage NAME command...`, which
#   - tees the command's output to $NANOCHAT_BASE_DIR/logs/NAME.log,
#   - stops the runbook with the stage name and the log path when the command fails,
#   - only prints the command when NANOCHAT_DRY_RUN=1 (nothing runs, nothing is installed),
#   - skips the stage when NAME is listed in NANOCHAT_SKIP (comma or space separated),
#     which is how a run that died half-way is resumed (see docs/runbooks.md).

NC_TAG="[nanochat]"

# nc_dry_run [LINE] : true when NANOCHAT_DRY_RUN=1, after printing LINE if one is given.
nc_dry_run() {
    [ "${NANOCHAT_DRY_RUN:-0}" = "1" ] || return 1
    [ $# -eq 0 ] || echo "$1"
}

# Print a command the way a shell would read it back (arguments quoted only where needed).
nc_print_command() {
    local words=() arg
    for arg in "$@"; do
        [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]] || printf -v arg '%q' "$arg"
        words+=("$arg")
    done
    echo "${words[*]}"
}

nc_note() {
    local prefix="$NC_TAG"
    nc_dry_run && prefix="#"  # a dry run's notes are comments, so its output stays a script
    echo "$prefix $*"
}

nc_skipped() {
    local list="${NANOCHAT_SKIP:-}"
    [[ " ${list//[,[:space:]]/ } " == *" $1 "* ]]
}

# nc_not_run NAME DRY_LINE : true when stage NAME does not run now, after saying why: it is listed in
# NANOCHAT_SKIP, or this is a dry run (which prints DRY_LINE instead).
nc_not_run() {
    if nc_skipped "$1"; then
        nc_note "skipping stage '$1' (listed in NANOCHAT_SKIP)"
        return 0
    fi
    nc_dry_run "$2"
}

nc_fail() {
    local name="$1" status="$2"
    echo "$NC_TAG stage '$name' failed with exit code $status" >&2
    echo "$NC_TAG log: $NC_LOGS/$name.log" >&2
    echo "$NC_TAG fix the cause, then re-run; NANOCHAT_SKIP=<stage,...> skips stages that already finished" >&2
    exit "$status"
}

# Default and export NANOCHAT_BASE_DIR (~/.cache/nanochat) and WANDB_RUN ("dummy" turns wandb logging
# off), create the base and log (NC_LOGS) folders and say where things go.
nc_init() {
    export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
    : "${WANDB_RUN:=dummy}"
    NC_LOGS="$NANOCHAT_BASE_DIR/logs"
    nc_dry_run "# dry run: NANOCHAT_BASE_DIR=$NANOCHAT_BASE_DIR (nothing is executed)" && return 0
    mkdir -p "$NANOCHAT_BASE_DIR" "$NC_LOGS"
    export PYTHONUNBUFFERED=1  # stage output reaches the logs as it happens
    echo "$NC_TAG base dir: $NANOCHAT_BASE_DIR  logs: $NC_LOGS"
}

# nc_run_logged NAME LABEL command... : unless skipped or dry, announce a stage and run it with its
# output on the terminal and in the stage's log (NC_LOG); NC_STATUS is the command's own exit status
# (not tee's), whatever the caller's errexit/pipefail: errexit is off inside a group tested by `||`.
nc_run_logged() {
    local name="$1" label="$2" start=$SECONDS
    shift 2
    NC_STATUS=0
    nc_not_run "$name" "$(nc_print_command "$@")" && return 0
    NC_LOG="$NC_LOGS/$name.log"
    mkdir -p "$NC_LOGS"
    echo "$NC_TAG ==> $name$label: $(nc_print_command "$@")"
    { "$@" 2>&1 | tee "$NC_LOG"; NC_STATUS=${PIPESTATUS[0]}; } || true
    if [ "$NC_STATUS" -eq 0 ]; then
        echo "$NC_TAG <== $name finished in $((SECONDS - start))s (log: $NC_LOG)"
    fi
}

# run_stage NAME command... : run one pipeline stage (see the top of this file).
run_stage() {
    nc_run_logged "$1" "" "${@:2}"
    [ "$NC_STATUS" -eq 0 ] || nc_fail "$1" "$NC_STATUS"
}

# run_optional_stage NAME command... : like run_stage, but a failure only warns (and returns 1).
run_optional_stage() {
    nc_run_logged "$1" " (optional)" "${@:2}"
    [ "$NC_STATUS" -eq 0 ] && return 0
    echo "$NC_TAG warning: optional stage '$1' failed with exit code $NC_STATUS; continuing (log: $NC_LOG)" >&2
    return 1
}

# start_background NAME command... : run a stage in the background (output only in its log).
start_background() {
    local name="$1"
    shift
    nc_not_run "$name" "$(nc_print_command "$@") &" && return 0
    mkdir -p "$NC_LOGS"
    echo "$NC_TAG ==> $name (background): $(nc_print_command "$@")"
    "$@" > "$NC_LOGS/$name.log" 2>&1 &
    printf -v "NC_BG_PID_$name" '%s' "$!"
}

# wait_background NAME : wait for a background stage and stop the runbook if it failed.
wait_background() {
    local name="$1" pid_var="NC_BG_PID_$1" status=0
    if nc_dry_run; then
        nc_skipped "$name" || echo "wait"
        return 0
    fi
    local pid="${!pid_var:-}"
    [ -n "$pid" ] || return 0  # skipped: nothing was started
    echo "$NC_TAG waiting for background stage '$name' (pid $pid)"
    wait "$pid" || status=$?
    [ "$status" -eq 0 ] || nc_fail "$name" "$status"
    echo "$NC_TAG background stage '$name' finished (log: $NC_LOGS/$name.log)"
}

# Install the Rust toolchain when it is missing (the tokenizer extension is compiled from source).
nc_ensure_rust() {
    if command -v cargo >/dev/null 2>&1 || [ -f "$HOME/.cargo/env" ]; then
        return 0
    fi
    nc_dry_run "curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" && return 0
    echo "$NC_TAG installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y || nc_fail rust_install $?
}

# nc_setup_env cpu|gpu : create/sync .venv (builds rustbpe) and activate it.
# NANOCHAT_SKIP_SETUP=1 uses the python already on PATH instead (e.g. an activated .venv).
nc_setup_env() {
    local extra="$1" status=0
    if [ "${NANOCHAT_SKIP_SETUP:-0}" = "1" ]; then
        nc_note "NANOCHAT_SKIP_SETUP=1: using $(command -v python || echo 'python (not found)') as is"
        return 0
    fi
    nc_dry_run "source dev/setup_env.sh $extra" && return 0
    set +u  # activation scripts read variables that may be unset
    # shellcheck source=dev/setup_env.sh
    source dev/setup_env.sh "$extra" || status=$?
    set -u
    [ "$status" -eq 0 ] && return 0
    echo "$NC_TAG environment setup failed (dev/setup_env.sh $extra, exit $status)" >&2
    exit "$status"
}

# GPU runbooks: stop before the first stage when torch cannot use CUDA (an old NVIDIA driver for
# the installed torch build would otherwise fall back to slow CPU processes that never finish).
nc_require_cuda() {
    local check='from nanochat.common import require_cuda; require_cuda()'
    nc_dry_run "python -c '$check'" && return 0
    python -c "$check" || exit 1
}

# Train the tokenizer unless one exists already (FORCE=1 retrains). Arguments go to tok_train.
nc_train_tokenizer() {
    local tokenizer="$NANOCHAT_BASE_DIR/tokenizer/tokenizer.pkl"
    if [ -f "$tokenizer" ] && [ "${FORCE:-0}" != "1" ]; then
        nc_note "tokenizer exists at $tokenizer: skipping tok_train (FORCE=1 retrains it)"
        return 0
    fi
    run_stage tok_train python -m scripts.tok_train "$@"
}

# Put the identity conversations in place: keep an existing file, build them offline from a data
# pack, or download them. They only flavour mid/SFT training, so a failure warns and goes on.
nc_identity_conversations() {
    local url="https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
    local dest="$NANOCHAT_BASE_DIR/identity_conversations.jsonl"
    if [ -s "$dest" ]; then
        nc_note "identity conversations already at $dest"
        return 0
    fi
    if [ -n "${NANOCHAT_DATA_PACK:-}" ]; then
        run_optional_stage identity python -m dev.gen_synthetic_data --offline \
            || echo "$NC_TAG continuing without identity conversations (CustomJSON contributes 0 rows)" >&2
        return 0
    fi
    if ! run_optional_stage identity curl -L --fail -o "$dest" "$url"; then
        rm -f "$dest"
        echo "$NC_TAG continuing without identity conversations; to include them, put the file at $dest" >&2
    fi
}
