"""scripts.mid_train on a tiny model and the data pack's real mixture: runs, saves every rank's optimizer
shard, resumes bit for bit. Observed through checkpoints, the report and its curves."""

import os

import torch

from stage_setup import metric_runs, read_checkpoint, save_model_checkpoint, write_identity

ARGS = ["--device_type=cpu", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=64",
        "--eval_every=3", "--eval_tokens=128", "--unembedding_lr=0.02"]


def run(base_dir, byte_tokenizer, argv):
    from scripts import mid_train
    if not os.path.exists(os.path.join(base_dir, "base_checkpoints")):
        save_model_checkpoint(base_dir, "base_checkpoints", byte_tokenizer, seq_len=32)
        write_identity(base_dir)
    mid_train.main(ARGS + argv)


def test_mid_train_runs_and_saves(data_pack, base_dir, byte_tokenizer):
    run(base_dir, byte_tokenizer, ["--num_iterations=6"])
    [losses] = metric_runs(base_dir, "midtraining", "train_loss")
    assert sorted(losses) == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    ckpt = os.path.join(base_dir, "mid_checkpoints", "d1")
    assert os.path.exists(os.path.join(ckpt, "model_000006.pt"))
    assert os.path.exists(os.path.join(ckpt, "optim_000006_rank0.pt"))
    assert os.path.exists(os.path.join(base_dir, "report", "midtraining.md"))


def test_mid_train_without_eval_does_not_crash(data_pack, base_dir, byte_tokenizer):
    run(base_dir, byte_tokenizer, ["--num_iterations=2", "--eval_every=-1"])
    assert metric_runs(base_dir, "midtraining", "val_bpb") == []
    with open(os.path.join(base_dir, "report", "midtraining.md")) as f:
        assert "Minimum validation bpb: None" in f.read()


def test_mid_train_resume_is_bit_identical(data_pack, base_dir, byte_tokenizer):
    run(base_dir, byte_tokenizer, ["--num_iterations=8", "--save_every=4"])
    full, full_meta = read_checkpoint(base_dir, "mid_checkpoints", "d1", 8)
    run(base_dir, byte_tokenizer, ["--num_iterations=8", "--resume_from_step=4"])
    resumed, resumed_meta = read_checkpoint(base_dir, "mid_checkpoints", "d1", 8)
    first, second = metric_runs(base_dir, "midtraining", "train_loss")
    assert sorted(second) == [5, 6, 7, 8] and all(second[s] == first[s] for s in second)
    assert resumed_meta["loop_state"] == full_meta["loop_state"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
