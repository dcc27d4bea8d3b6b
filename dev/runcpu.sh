#!/usr/bin/env bash
# The whole pipeline on CPU (or Apple MPS) with a tiny model: dataset -> tokenizer -> base model
# -> base loss/CORE -> midtraining -> SFT -> chat evals -> a few RL steps -> report. It exercises
# every code path; the model it makes is not meant to be good. Sized to finish well under
# 30 minutes on 2 cores.
#
#   bash dev/runcpu.sh                                   # downloads what it needs
#   NANOCHAT_DATA_PACK=/path/to/data bash dev/runcpu.sh  # fully offline, from a data pack
#   NANOCHAT_SMOKE=1 bash dev/runcpu.sh                  # an even smaller smoke run (minutes)
#   NANOCHAT_RUNCPU_RL=0 bash dev/runcpu.sh              # leave out the few RL steps
#   NANOCHAT_DRY_RUN=1 bash dev/runcpu.sh                # print the commands, run nothing
#   NANOCHAT_SKIP_SETUP=1 bash dev/runcpu.sh             # use the python on PATH, no uv sync
#
# Logs: $NANOCHAT_BASE_DIR/logs/<stage>.log. Resume with NANOCHAT_SKIP=<stage,...>.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=dev/runbook_lib.sh
source dev/runbook_lib.sh

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)}"
nc_init

# Sizes. A small vocabulary keeps the embedding tables (and so the step time) small on CPU.
DEPTH=4
SEQ_LEN=512
TOK_MAX_CHARS=100000000
TOK_VOCAB=8192
BASE_ITERATIONS=200
BASE_EVAL_EVERY=50
CORE_EVERY=200
CORE_PER_TASK=12
BASE_EVAL_PER_TASK=16
MID_ITERATIONS=100
SFT_ITERATIONS=100
CHAT_EVAL_PROBLEMS=20
CHAT_EVAL_TOKENS=128
RL_STEPS=4
if [ "${NANOCHAT_SMOKE:-0}" = "1" ]; then
    DEPTH=2
    SEQ_LEN=256
    TOK_MAX_CHARS=5000000
    TOK_VOCAB=1024
    BASE_ITERATIONS=10
    BASE_EVAL_EVERY=5
    CORE_EVERY=10
    CORE_PER_TASK=2
    BASE_EVAL_PER_TASK=2
    MID_ITERATIONS=5
    SFT_ITERATIONS=4
    CHAT_EVAL_PROBLEMS=2
    CHAT_EVAL_TOKENS=16
    RL_STEPS=2
fi
TOKENS_PER_STEP=$((2 * SEQ_LEN))  # device batch 2, no gradient accumulation
EVAL_TOKENS=$((4 * TOKENS_PER_STEP))

nc_setup_env cpu
run_stage report_reset python -m nanochat.report reset

# Data (with NANOCHAT_DATA_PACK set, the dataset module packs the pack's corpus into shards).
run_stage dataset python -m nanochat.dataset -n 4
nc_train_tokenizer --max_chars="$TOK_MAX_CHARS" --vocab_size="$TOK_VOCAB"
run_stage tok_eval python -m scripts.tok_eval

# Base model.
run_stage base_train python -m scripts.base_train --depth="$DEPTH" --max_seq_len="$SEQ_LEN" \
    --device_batch_size=2 --total_batch_size="$TOKENS_PER_STEP" --eval_every="$BASE_EVAL_EVERY" \
    --eval_tokens="$EVAL_TOKENS" --core_metric_every="$CORE_EVERY" \
    --core_metric_max_per_task="$CORE_PER_TASK" --sample_every="$BASE_ITERATIONS" \
    --num_iterations="$BASE_ITERATIONS" --run="$WANDB_RUN"
run_stage base_loss python -m scripts.base_loss --device_batch_size=1 --split_tokens="$EVAL_TOKENS"
run_stage base_eval python -m scripts.base_eval --max-per-task="$BASE_EVAL_PER_TASK"

# Midtraining (identity conversations are optional: without them CustomJSON adds no rows).
nc_identity_conversations
run_stage mid_train python -m scripts.mid_train --max_seq_len="$SEQ_LEN" --device_batch_size=2 \
    --eval_every="$BASE_EVAL_EVERY" --eval_tokens="$EVAL_TOKENS" --total_batch_size="$TOKENS_PER_STEP" \
    --num_iterations="$MID_ITERATIONS" --run="$WANDB_RUN"
run_stage chat_eval_mid python -m scripts.chat_eval -i mid --max-new-tokens="$CHAT_EVAL_TOKENS" \
    --max-problems="$CHAT_EVAL_PROBLEMS"

# Supervised finetuning.
run_stage chat_sft python -m scripts.chat_sft --device_batch_size=1 --target_examples_per_step=4 \
    --num_iterations="$SFT_ITERATIONS" --eval_steps=4 --eval_metrics_max_problems=16 --run="$WANDB_RUN"
run_stage chat_eval_sft python -m scripts.chat_eval -i sft --max-new-tokens="$CHAT_EVAL_TOKENS" \
    --max-problems="$CHAT_EVAL_PROBLEMS"

# A few steps of reinforcement learning on GSM8K (NANOCHAT_RUNCPU_RL=0 leaves it out). Optional:
# a failure here warns and the report is still generated.
if [ "${NANOCHAT_RUNCPU_RL:-1}" = "1" ] && run_optional_stage chat_rl python -m scripts.chat_rl \
    --num_steps="$RL_STEPS" --examples_per_step=2 --num_samples=4 --device_batch_size=4 \
    --max_new_tokens="$CHAT_EVAL_TOKENS" --eval_every="$RL_STEPS" --eval_examples=4 --run="$WANDB_RUN"; then
    run_optional_stage chat_eval_rl python -m scripts.chat_eval -i rl -a GSM8K \
        --max-new-tokens="$CHAT_EVAL_TOKENS" --max-problems="$CHAT_EVAL_PROBLEMS" || true
fi

# Talk to it:
#   python -m scripts.chat_cli -p "Why is the sky blue?"
#   python -m scripts.chat_web
run_stage report_generate python -m nanochat.report generate
