"""scripts.chat_sft on a tiny model: padded training runs, saves at num_iterations, resumes bit for bit."""

import os

import pytest
import torch

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import save_token_bytes


def conv(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def tiny_mid(base_dir, tokenizer):
    tok_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tok_dir)
    save_token_bytes(tokenizer, tok_dir)
    config = GPTConfig(sequence_len=64, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2,
                       n_kv_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    save_checkpoint(os.path.join(base_dir, "mid_checkpoints", "d1"), 5, model.state_dict(), None,
                    {"step": 5, "model_config": config.__dict__})


def toy_tasks():
    train = [("toy", [conv(f"capital of country {i}?", f"city {i}") for i in range(30)])]
    return train, [("toy val", [conv(f"hi {i}", f"hello {i}") for i in range(6)])]


ARGS = ["--device_type=cpu", "--device_batch_size=2", "--target_examples_per_step=4", "--eval_every=2",
        "--eval_steps=2", "--eval_metrics_every=-1", "--init_lr_frac=0.5"]


def run(argv, tasks_fn=toy_tasks):
    from scripts import chat_sft
    return chat_sft.main(ARGS + argv, tasks_fn=tasks_fn)


def test_sft_trains_and_saves_at_the_final_step(base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    out = run(["--num_iterations=5"])
    assert sorted(out["losses"]) == list(range(5))
    assert out["losses"][4] < out["losses"][0]
    assert out["val_loss"] is not None
    assert os.path.exists(os.path.join(base_dir, "chatsft_checkpoints", "d1", "model_000005.pt"))
    with open(os.path.join(base_dir, "report", "chat-sft.md")) as f:
        assert "Training rows: 30" in f.read()


def test_iterations_from_epochs(base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    out = run(["--eval_every=-1", "--num_epochs=2"])
    assert out["num_iterations"] == (30 // 4) * 2


def test_examples_per_step_must_divide(base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    with pytest.raises(ValueError, match="must be a multiple of device_batch_size"):
        run(["--target_examples_per_step=5"])


def test_sft_resume_is_bit_identical(base_dir, byte_tokenizer):
    tiny_mid(base_dir, byte_tokenizer)
    full = run(["--num_iterations=6", "--save_every=3"])
    resumed = run(["--num_iterations=6", "--resume_from_step=3"])
    assert sorted(resumed["losses"]) == [3, 4, 5]
    for step in (3, 4, 5):
        assert resumed["losses"][step] == full["losses"][step]
    for (name, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), name


def test_an_all_masked_micro_batch_adds_zero_to_the_step(base_dir, byte_tokenizer):
    """A prompt longer than max_seq_len leaves no target token; its micro-batch must not turn the step into
    NaN, and the step must equal the step on the valid example alone (loss = mean over valid tokens)."""
    tiny_mid(base_dir, byte_tokenizer)
    short = conv("hi", "hello there")
    too_long = conv("tell me " * 20, "never seen")  # > 32 tokens: the assistant part is cut off
    common = ["--max_seq_len=32", "--device_batch_size=1", "--num_iterations=1", "--eval_every=-1"]
    mixed = run(common + ["--target_examples_per_step=2"], lambda: ([("mix", [too_long, short])], [("v", [short])]))
    alone = run(common + ["--target_examples_per_step=1"], lambda: ([("one", [short])], [("v", [short])]))
    assert torch.isfinite(torch.tensor(mixed["losses"][0]))
    assert mixed["losses"][0] == pytest.approx(alone["losses"][0], rel=1e-5)
    for (name, a), b in zip(mixed["model"].state_dict().items(), alone["model"].state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow  # a torchrun launch
def test_two_ranks_normalise_by_the_tokens_of_every_rank(base_dir, byte_tokenizer):
    """2 ranks x 1 example == 1 process x 2 micro-batches: the step's loss is the mean over every rank's
    valid tokens (micro-batches of different lengths, one of them all masked)."""
    import subprocess
    import sys
    tiny_mid(base_dir, byte_tokenizer)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    helper = os.path.join(repo, "tests", "dist_sft_helper.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo, NANOCHAT_BASE_DIR=base_dir)
    args = ARGS + ["--max_seq_len=32", "--device_batch_size=1", "--target_examples_per_step=2",
                   "--num_iterations=3", "--eval_every=-1"]
    ckpt = os.path.join(base_dir, "chatsft_checkpoints", "d1")
    models = []
    for launcher in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]):
        out = subprocess.run([sys.executable] + launcher + [helper, "--"] + args, cwd=repo, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        models.append(torch.load(os.path.join(ckpt, "model_000003.pt"), map_location="cpu"))
    for key, value in models[0].items():
        assert torch.isfinite(value).all(), key
        assert torch.allclose(value, models[1][key], rtol=1e-4, atol=1e-6), key
