"""Chat RL: the policy-gradient update raises a toy reward; the stage script runs on CPU."""

import os

import torch

from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.policy_gradient import policy_gradient_loss, sample_rollouts

LETTERS = set(range(ord("a"), ord("z") + 1))


def letter_fraction(text):
    return sum(ord(c) in LETTERS for c in text) / max(len(text), 1)


def test_policy_gradient_raises_a_toy_reward(byte_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=byte_tokenizer.get_vocab_size(), n_layer=1, n_head=2,
                          n_kv_head=2, n_embd=32))
    model.init_weights()
    engine = Engine(model, byte_tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    prompt = [byte_tokenizer.get_bos_token_id()] + byte_tokenizer.encode("write:")
    mean_rewards = []
    for step in range(8):
        batch = sample_rollouts(engine, byte_tokenizer, prompt, letter_fraction,
                                num_samples=16, device_batch_size=8, max_new_tokens=8, seed_key=(step, 0))
        mean_rewards.append(batch["rewards"].mean().item())
        for start in (0, 8):
            rows = slice(start, start + 8)
            loss = policy_gradient_loss(model, batch["inputs"][rows], batch["targets"][rows],
                                        batch["advantages"][rows], normalizer=2)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert sum(mean_rewards[-2:]) / 2 > sum(mean_rewards[:2]) / 2 + 0.2, mean_rewards


def test_chat_rl_script_runs_on_cpu(data_pack, base_dir, byte_tokenizer, capsys):
    """The stage on the data pack's GSM8K: pass@k at its interval, a reward per step, the last checkpoint."""
    import re

    from scripts import chat_rl
    from stage_setup import metric_runs, save_model_checkpoint
    save_model_checkpoint(base_dir, "chatsft_checkpoints", byte_tokenizer, seq_len=256, step=3)
    chat_rl.main(["--device_type=cpu", "--num_steps=3", "--examples_per_step=2", "--num_samples=4",
                  "--device_batch_size=2", "--max_new_tokens=6", "--eval_every=2", "--eval_examples=3"])
    log = capsys.readouterr().out
    assert [int(s) for s in re.findall(r"^Step (\d+) \| pass@1: [0-9.]+, pass@2: [0-9.]+$", log, re.M)] == [0, 2]
    [rewards] = metric_runs(base_dir, "chat-rl", "reward")
    assert sorted(rewards) == [0, 1, 2] and all(0.0 <= r <= 1.0 for r in rewards.values())
    assert os.path.exists(os.path.join(base_dir, "chatrl_checkpoints", "d1", "model_000002.pt"))
    assert os.path.exists(os.path.join(base_dir, "report", "chat-rl.md"))


def test_pass_at_k_counts_any_correct_among_first_k():
    from scripts.chat_rl import pass_at_k
    records = [{"outcomes": [{"is_correct": False}, {"is_correct": True}]},
               {"outcomes": [{"is_correct": True}, {"is_correct": False}]},
               {"outcomes": [{"is_correct": False}, {"is_correct": False}]}]
    result = pass_at_k(records, 2, "cpu")
    assert abs(result["pass@1"] - 1 / 3) < 1e-6 and abs(result["pass@2"] - 2 / 3) < 1e-6
    # a correct answer only in the third sample counts from pass@3 on, and never twice
    late = [{"outcomes": [{"is_correct": False}, {"is_correct": False}, {"is_correct": True}]},
            {"outcomes": [{"is_correct": True}, {"is_correct": True}, {"is_correct": True}]}]
    assert pass_at_k(late, 3, "cpu") == {"pass@1": 0.5, "pass@2": 0.5, "pass@3": 1.0}
