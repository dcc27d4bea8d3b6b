#!/usr/bin/env bash
# The "$100 tier": train and evaluate a d20 chat model end to end on one 8xH100 node in about
# 4 hours (~$24/hour x 4h). Stages, flags and artifacts: docs/runbooks.md.
#
#   bash speedrun.sh                                  # the whole run
#   WANDB_RUN=speedrun bash speedrun.sh               # also log to wandb (after `wandb login`)
#   screen -L -Logfile speedrun.log -S speedrun bash speedrun.sh   # survive a dropped ssh session
#   NANOCHAT_DRY_RUN=1 bash speedrun.sh               # print the commands, run nothing
#   NANOCHAT_SKIP=report_reset,base_train bash speedrun.sh         # resume after a failure
#
# Each stage's output is also written to $NANOCHAT_BASE_DIR/logs/<stage>.log; a failing stage
# stops the run and names itself and its log.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=dev/runbook_lib.sh
source dev/runbook_lib.sh

export OMP_NUM_THREADS=1
nc_init  # NANOCHAT_BASE_DIR defaults to ~/.cache/nanochat, WANDB_RUN to dummy (no wandb logging)

# Python environment (uv, .venv, dependencies) and the Rust tokenizer extension.
nc_ensure_rust
nc_setup_env gpu
nc_require_cuda

# A fresh report card: system info and the run's start time.
run_stage report_reset python -m nanochat.report reset

# Tokenizer: 8 shards (~2B characters) to train on; the pretraining data (240 shards, ~54B
# characters: ~11.2B tokens at ~4.8 chars/token for d20) downloads in the background meanwhile.
# Shards already on disk are skipped.
run_stage dataset_tokenizer python -m nanochat.dataset -n 8
start_background dataset python -m nanochat.dataset -n 240
nc_train_tokenizer --max_chars=2000000000
run_stage tok_eval python -m scripts.tok_eval

# Pretraining needs every shard: wait for the download to finish (and stop if it failed).
wait_background dataset

# Base model: pretraining, then bits per byte on larger splits, then the CORE score.
TORCHRUN=(torchrun --standalone --nproc_per_node="${NPROC_PER_NODE:-8}")
run_stage base_train "${TORCHRUN[@]}" -m scripts.base_train -- --depth=20 --run="$WANDB_RUN"
run_stage base_loss "${TORCHRUN[@]}" -m scripts.base_loss
run_stage base_eval "${TORCHRUN[@]}" -m scripts.base_eval

# Midtraining: conversations, tool use, multiple choice and the model's identity.
nc_identity_conversations
run_stage mid_train "${TORCHRUN[@]}" -m scripts.mid_train -- --run="$WANDB_RUN"
run_stage chat_eval_mid "${TORCHRUN[@]}" -m scripts.chat_eval -- -i mid

# Supervised finetuning, one conversation per row.
run_stage chat_sft "${TORCHRUN[@]}" -m scripts.chat_sft -- --run="$WANDB_RUN"
run_stage chat_eval_sft "${TORCHRUN[@]}" -m scripts.chat_eval -- -i sft

# Talk to it:
#   python -m scripts.chat_cli -p "Why is the sky blue?"
#   python -m scripts.chat_web
# Optional reinforcement learning on GSM8K:
#   torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --run=$WANDB_RUN
#   torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -- -i rl -a GSM8K

# The report card: $NANOCHAT_BASE_DIR/report/report.md, copied to ./report.md.
run_stage report_generate python -m nanochat.report generate
