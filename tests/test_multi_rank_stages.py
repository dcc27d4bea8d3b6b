"""
The post-training stages and chat_eval under torchrun with 2 gloo ranks on CPU, on the data pack's
real tasks: what one rank computes must add up with the other's (shards, counts, averages).
"""

import os
import re

import pytest

from stage_setup import max_relative_difference, read_checkpoint, run_stage, save_model_checkpoint, write_identity

pytestmark = pytest.mark.slow  # each test starts torchrun (two processes, each importing torch)


@pytest.fixture
def chat_env(data_pack, base_dir, byte_tokenizer):
    write_identity(base_dir)
    return base_dir


def test_sft_two_ranks_equal_one_process_with_double_accumulation(chat_env, byte_tokenizer):
    """Rank r takes rows r, r+2, ...; one process with 2 micro-batches takes rows 0, 1, ...: every step
    sees the same two conversations, so the saved models agree."""
    save_model_checkpoint(chat_env, "mid_checkpoints", byte_tokenizer, seq_len=128)
    common = ["--device_type=cpu", "--max_seq_len=1024", "--device_batch_size=1", "--target_examples_per_step=2",
              "--num_iterations=2", "--eval_every=2", "--eval_metrics_every=-1", "--init_lr_frac=1.0"]
    # validation reads rows 0 and 1 either way: in two steps of one process, or one step on each rank
    single_log = run_stage("scripts.chat_sft", common + ["--eval_steps=2"], chat_env)
    assert "Gradient accumulation steps: 2" in single_log
    single, single_meta = read_checkpoint(chat_env, "chatsft_checkpoints", "d1", 2)
    double_log = run_stage("scripts.chat_sft", common + ["--eval_steps=1"], chat_env, nproc=2)
    assert "Gradient accumulation steps: 1" in double_log
    double, double_meta = read_checkpoint(chat_env, "chatsft_checkpoints", "d1", 2)
    assert max_relative_difference(single, double) < 1e-5
    assert os.path.exists(os.path.join(chat_env, "chatsft_checkpoints", "d1", "optim_000002_rank1.pt"))
    assert len(double_meta["dataloader_state_dicts"]) == 2
    assert double_meta["val_loss"] == pytest.approx(single_meta["val_loss"], rel=1e-5)


def test_mid_train_on_two_ranks_saves_both_and_resumes(chat_env, byte_tokenizer):
    save_model_checkpoint(chat_env, "base_checkpoints", byte_tokenizer, seq_len=32)
    common = ["--device_type=cpu", "--max_seq_len=32", "--device_batch_size=1", "--total_batch_size=64",
              "--num_iterations=4", "--eval_every=4", "--eval_tokens=128"]
    log = run_stage("scripts.mid_train", common + ["--save_every=2"], chat_env, nproc=2)
    assert "gradient accumulation steps: 1" in log
    ckpt = os.path.join(chat_env, "mid_checkpoints", "d1")
    assert {"optim_000004_rank0.pt", "optim_000004_rank1.pt"} <= set(os.listdir(ckpt))
    full, meta = read_checkpoint(chat_env, "mid_checkpoints", "d1", 4)
    assert len(meta["dataloader_state_dicts"]) == 2 and meta["val_bpb"] > 0
    run_stage("scripts.mid_train", common + ["--resume_from_step=2"], chat_env, nproc=2)
    resumed, _ = read_checkpoint(chat_env, "mid_checkpoints", "d1", 4)
    assert max_relative_difference(full, resumed) == 0.0  # bit for bit, every rank back at its own position


def test_chat_rl_on_two_ranks(chat_env, byte_tokenizer):
    save_model_checkpoint(chat_env, "chatsft_checkpoints", byte_tokenizer, seq_len=256)
    log = run_stage("scripts.chat_rl", ["--device_type=cpu", "--num_steps=2", "--examples_per_step=2",
                                        "--num_samples=2", "--device_batch_size=2", "--max_new_tokens=4",
                                        "--eval_every=2", "--eval_examples=4", "--save_every=-1"], chat_env, nproc=2)
    assert re.search(r"Step 0 \| pass@1: [0-9.]+, pass@2: [0-9.]+", log), log[-3000:]
    assert len(re.findall(r"Average reward: [0-9.]+", log)) == 2
    assert os.path.exists(os.path.join(chat_env, "chatrl_checkpoints", "d1", "model_000001.pt"))  # the last step
    with open(os.path.join(chat_env, "report", "chat-rl.md")) as f:
        assert "num_steps: 2" in f.read()


def accuracies(log):
    return {name: float(acc) for name, acc in re.findall(r"^(\S+) accuracy: ([0-9.]+)%", log, re.M)}


def test_chat_eval_on_two_ranks_equals_one_process(chat_env, byte_tokenizer):
    save_model_checkpoint(chat_env, "chatsft_checkpoints", byte_tokenizer, seq_len=256)
    args = ["-i", "sft", "-a", "ARC-Easy|GSM8K", "-x", "6", "-m", "8", "-b", "2", "--device-type=cpu", "-d", "float32"]
    single = accuracies(run_stage("scripts.chat_eval", args, chat_env))
    double = accuracies(run_stage("scripts.chat_eval", args, chat_env, nproc=2))
    assert set(single) == {"ARC-Easy", "GSM8K"}
    assert double == single
