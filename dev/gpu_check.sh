#!/usr/bin/env bash
# The GPU figures in one call, on one H100/H200 with no network (about 6 minutes):
#   1. training tokens/s and MFU at d20 (seq 2048, device batch 32), ours and the original's recipe
#   2. decode tokens/s at batch 1 and 8 on a d20-shaped model, and the fraction of the HBM bound
#   3. a 20-step d12 base_train (compiled, bf16 autocast) whose loss must fall
#   4. Engine == GPT.generate greedy on that checkpoint (python -m nanochat.engine)
# then a summary, exit 1 when a check fails. The last step's validation bpb uses 4 batches only.
#
#   bash dev/gpu_check.sh                # on the GPU machine: the python on PATH, torch preinstalled
#   bash dev/gpu_check.sh --wheels DIR   # first install the wheels in DIR (offline, no dependency resolution)
#   bash dev/gpu_check.sh --cpu          # every step at toy sizes on CPU (what the tests run)
#
# The tokenizer trainer is a Rust extension; a machine without Rust needs its abi3 wheel, built
# beforehand and brought along: see "GPU check" in docs/runbooks.md. The corpus is this repo's
# own text, so nothing is downloaded. Work files go to a temporary base dir, removed at the end
# (GPU_CHECK_KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=dev/runbook_lib.sh
source dev/runbook_lib.sh

MODE=gpu
WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --wheels) WHEELS="${2:?--wheels needs a directory}"; shift ;;
        --wheels=*) WHEELS="${1#--wheels=}" ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see bash dev/gpu_check.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "$WHEELS" ]; then
    compgen -G "$WHEELS/*.whl" >/dev/null || { echo "no .whl files in $WHEELS" >&2; exit 2; }
    echo "$NC_TAG installing the wheels in $WHEELS"
    python -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl
fi
if ! missing="$(python -c "import rustbpe, tiktoken, pyarrow" 2>&1)"; then
    echo "$NC_TAG this python lacks nanochat's tokenizer or data modules: ${missing##*$'\n'}" >&2
    echo "$NC_TAG build the rustbpe wheel and download the others where there is network, then" >&2
    echo "$NC_TAG bash dev/gpu_check.sh --wheels DIR  (docs/runbooks.md, \"GPU check\")" >&2
    exit 1
fi
[ "$MODE" = cpu ] || nc_require_cuda

NANOCHAT_BASE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/nanochat_gpu_check.XXXXXX")"
unset NANOCHAT_DATA_PACK  # the corpus is the repo's text, the same on every machine
[ "${GPU_CHECK_KEEP:-0}" = "1" ] || trap 'rm -rf "$NANOCHAT_BASE_DIR"' EXIT
nc_init

if [ "$MODE" = gpu ]; then
    TRAIN_BENCH=(--depth=20 --max_seq_len=2048 --device_batch_size=32)
    DECODE_BENCH=(--depth=20)
    BASE=(--depth=12 --max_seq_len=2048 --device_batch_size=32 --total_batch_size=65536 --eval_tokens=262144)
    VOCAB=8192
else
    TRAIN_BENCH=(--device_type=cpu --depth=2 --max_seq_len=64 --device_batch_size=2 --vocab_size=512 --rounds=2
                 --steps=2 --warmup_steps=1 --compile=0)
    DECODE_BENCH=(--device=cpu --depth=2 --vocab_size=512 --prompt_len=8 --new_tokens=8 --batch=2 --repeats=1
                  --compile=0)
    BASE=(--device_type=cpu --depth=2 --max_seq_len=64 --device_batch_size=2 --total_batch_size=128 --eval_tokens=512)
    VOCAB=512
fi

run_stage bench_train python -m dev.bench_train "${TRAIN_BENCH[@]}" --json
run_stage bench_inference python -m dev.bench_inference "${DECODE_BENCH[@]}" --json

read -r -a CORPUS <<< "$(python -m dev.gpu_check corpus "$NANOCHAT_BASE_DIR/corpus")"
run_stage dataset python -m nanochat.dataset --from-jsonl "${CORPUS[@]}"
run_stage tok_train python -m scripts.tok_train --max_chars=2000000 --vocab_size="$VOCAB"
run_stage base_train python -m scripts.base_train "${BASE[@]}" --num_iterations=20 --eval_every=-1 \
    --core_metric_every=-1 --sample_every=-1 --run=dummy
run_stage engine_check python -m nanochat.engine

echo
echo "$NC_TAG ==> summary ($(python -c 'import torch; print(torch.__version__)'), $MODE)"
python -m dev.gpu_check summary "$NC_LOGS"
