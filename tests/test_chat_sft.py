"""scripts.chat_sft on a tiny model and the data pack's real mixture: padded training runs, saves at
num_iterations, resumes bit for bit. Observed through checkpoints, the report and its curves."""

import os

import pytest
import torch

from stage_setup import metric_runs, read_checkpoint, save_model_checkpoint, write_identity

ARGS = ["--device_type=cpu", "--device_batch_size=2", "--target_examples_per_step=4", "--eval_every=2",
        "--eval_steps=2", "--eval_metrics_every=-1", "--init_lr_frac=0.5"]


def tiny_mid(base_dir, tokenizer):
    save_model_checkpoint(base_dir, "mid_checkpoints", tokenizer, seq_len=64, step=5)
    write_identity(base_dir)


def run(argv):
    from scripts import chat_sft
    chat_sft.main(ARGS + argv)


def test_sft_trains_and_saves_at_the_final_step(data_pack, base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    run(["--num_iterations=5", "--max_seq_len=64"])
    [losses] = metric_runs(base_dir, "chat-sft", "train_loss")
    assert sorted(losses) == list(range(5))
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    _, meta = read_checkpoint(base_dir, "chatsft_checkpoints", "d1", 5)
    assert meta["val_loss"] is not None and meta["val_loss"] > 0
    with open(os.path.join(base_dir, "report", "chat-sft.md")) as f:
        assert "Training rows: " in f.read()


def test_examples_per_step_must_divide(data_pack, base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    with pytest.raises(ValueError, match="must be a multiple of device_batch_size"):
        run(["--target_examples_per_step=5"])


def test_sft_resume_is_bit_identical(data_pack, base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    run(["--num_iterations=6", "--save_every=3", "--max_seq_len=64"])
    full, _ = read_checkpoint(base_dir, "chatsft_checkpoints", "d1", 6)
    run(["--num_iterations=6", "--resume_from_step=3", "--max_seq_len=64"])
    resumed, _ = read_checkpoint(base_dir, "chatsft_checkpoints", "d1", 6)
    first, second = metric_runs(base_dir, "chat-sft", "train_loss")
    assert sorted(second) == [3, 4, 5] and all(second[s] == first[s] for s in second)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_an_all_masked_micro_batch_adds_zero_to_the_step(data_pack, base_dir, byte_tokenizer):
    """With max_seq_len=16 most real prompts leave no target token: those micro-batches must add zero
    to the step (loss = sum over valid tokens / their count), not turn it into NaN."""
    tiny_mid(base_dir, byte_tokenizer)
    run(["--max_seq_len=16", "--device_batch_size=1", "--target_examples_per_step=2", "--num_iterations=4",
         "--eval_every=-1"])
    [losses] = metric_runs(base_dir, "chat-sft", "train_loss")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(list(losses.values()))))
    params, _ = read_checkpoint(base_dir, "chatsft_checkpoints", "d1", 4)
    assert all(torch.isfinite(v).all() for v in params.values())
