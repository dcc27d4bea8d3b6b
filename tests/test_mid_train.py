"""scripts.mid_train on a tiny model: runs, saves every rank's optimizer shard, resumes bit for bit."""

import os

import torch

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import save_token_bytes


def conv(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def tiny_base(base_dir, tokenizer, seq_len=32):
    """A randomly initialised 1-layer base checkpoint plus the tokenizer files it needs."""
    tok_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tok_dir)
    save_token_bytes(tokenizer, tok_dir)
    config = GPTConfig(sequence_len=seq_len, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2,
                       n_kv_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    meta = {"step": 0, "model_config": config.__dict__, "device_batch_size": 2, "max_seq_len": seq_len}
    save_checkpoint(os.path.join(base_dir, "base_checkpoints", "d1"), 0, model.state_dict(), None, meta)


def toy_tasks():
    train = [("toy", [conv(f"what is {i} plus one?", f"it is {i + 1}") for i in range(40)]),
             ("empty identity", [])]
    return train, [("toy val", [conv(f"say {i}", f"{i}") for i in range(10)])]


ARGS = ["--device_type=cpu", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=64",
        "--eval_every=3", "--eval_tokens=128", "--unembedding_lr=0.02"]


def run(argv):
    from scripts import mid_train
    return mid_train.main(ARGS + argv, tasks_fn=toy_tasks)


def test_mid_train_runs_and_saves(base_dir, byte_tokenizer):
    tiny_base(base_dir, byte_tokenizer)
    out = run(["--num_iterations=6"])
    assert sorted(out["losses"]) == list(range(6))
    assert all(torch.isfinite(torch.tensor(list(out["losses"].values()))))
    ckpt = os.path.join(base_dir, "mid_checkpoints", "d1")
    assert os.path.exists(os.path.join(ckpt, "model_000006.pt"))
    assert os.path.exists(os.path.join(ckpt, "optim_000006_rank0.pt"))
    assert os.path.exists(os.path.join(base_dir, "report", "midtraining.md"))


def test_mid_train_without_eval_does_not_crash(base_dir, byte_tokenizer):
    tiny_base(base_dir, byte_tokenizer)
    out = run(["--num_iterations=2", "--eval_every=-1"])
    assert out["val_bpb"] == {}
    with open(os.path.join(base_dir, "report", "midtraining.md")) as f:
        assert "Minimum validation bpb: None" in f.read()


def test_one_epoch_when_num_iterations_unset(base_dir, byte_tokenizer):
    tiny_base(base_dir, byte_tokenizer)
    out = run(["--eval_every=-1", "--dry_run=1"])
    assert 3 <= out["num_iterations"] < 40  # stops when the 40 conversations are used up
    assert not os.path.exists(os.path.join(base_dir, "mid_checkpoints"))


def test_mid_train_resume_is_bit_identical(base_dir, byte_tokenizer):
    tiny_base(base_dir, byte_tokenizer)
    full = run(["--num_iterations=8", "--save_every=4"])
    resumed = run(["--num_iterations=8", "--resume_from_step=4"])
    assert sorted(resumed["losses"]) == [4, 5, 6, 7]
    for step in range(4, 8):
        assert resumed["losses"][step] == full["losses"][step]
    for (name, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), name
