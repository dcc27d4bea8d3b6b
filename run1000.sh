#!/usr/bin/env bash
# The "$1000 tier": a d32 chat model on one 8xH100 node in ~41.6 hours (~31 h of it pretraining).
# Usage and options are the same as speedrun.sh (NANOCHAT_DRY_RUN, NANOCHAT_SKIP, WANDB_RUN, logs);
# see docs/runbooks.md.
#
# How the numbers below were sized (repeat this for another budget):
#   1. Pick the depth the budget affords; the width follows from it (64 x depth) and the
#      Chinchilla horizon trains on 20 tokens per parameter.
#   2. Find the largest --device_batch_size that fits in GPU memory: d32 fits 8 rows of 2048
#      tokens (16,384 tokens per micro-batch per rank), so the 524,288-token batch takes 4
#      gradient-accumulation steps on 8 GPUs.
#   3. Check that steps x step time fits the budget: 71,680 steps x ~1.57 s = ~31 h at ~51% MFU.
#   4. Size the data: tokens x 4.8 characters per token / 250M characters per shard, plus a
#      margin: ~37.6B tokens -> ~720 shards -> 800.
#   5. Midtraining must use the same --device_batch_size as pretraining.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=dev/runbook_lib.sh
source dev/runbook_lib.sh

export OMP_NUM_THREADS=1
nc_init

nc_ensure_rust
nc_setup_env gpu
nc_require_cuda
run_stage report_reset python -m nanochat.report reset

nc_identity_conversations

# 16 shards (~4B characters) for the tokenizer; 800 for pretraining in the background.
run_stage dataset_tokenizer python -m nanochat.dataset -n 16
start_background dataset python -m nanochat.dataset -n 800
nc_train_tokenizer --max_chars=4000000000
run_stage tok_eval python -m scripts.tok_eval

# Pretraining reads every shard: wait for the download (the reference did not).
wait_background dataset

TORCHRUN=(torchrun --standalone --nproc_per_node="${NPROC_PER_NODE:-8}")
run_stage base_train "${TORCHRUN[@]}" -m scripts.base_train -- --depth=32 --device_batch_size=8 --run="$WANDB_RUN"
run_stage base_loss "${TORCHRUN[@]}" -m scripts.base_loss
run_stage base_eval "${TORCHRUN[@]}" -m scripts.base_eval

run_stage mid_train "${TORCHRUN[@]}" -m scripts.mid_train -- --device_batch_size=8 --run="$WANDB_RUN"
run_stage chat_eval_mid "${TORCHRUN[@]}" -m scripts.chat_eval -- -i mid

run_stage chat_sft "${TORCHRUN[@]}" -m scripts.chat_sft -- --run="$WANDB_RUN"
run_stage chat_eval_sft "${TORCHRUN[@]}" -m scripts.chat_eval -- -i sft

run_stage report_generate python -m nanochat.report generate

# Serve the model (runs until interrupted).
run_stage chat_web python -m scripts.chat_web
