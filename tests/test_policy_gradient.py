"""Advantages, rollout padding and the policy-gradient loss of nanochat.policy_gradient."""

import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.chat_data import collate_padded
from nanochat.policy_gradient import group_advantages, policy_gradient_loss


def test_advantages_are_reward_minus_group_mean():
    assert group_advantages([1.0, 0.0, 0.0, 1.0]).tolist() == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([1.0, 1.0, 1.0]).tolist() == [0.0, 0.0, 0.0]  # no signal when all agree
    two_groups = group_advantages(torch.tensor([[1.0, 0.0], [3.0, 5.0]]))
    assert two_groups.tolist() == [[0.5, -0.5], [-1.0, 1.0]]  # each prompt is its own baseline
    with pytest.raises(ValueError):
        group_advantages([])


def test_rollouts_collate_to_train_only_sampled_tokens():
    inputs, targets = collate_padded([([1, 2, 3, 4], [0, 0, 1, 0]), ([1, 2, 9], [0, 0, 1])], pad_id=7)
    assert inputs.tolist() == [[1, 2, 3], [1, 2, 7]]
    assert targets.tolist() == [[-1, 3, -1], [-1, 9, -1]]  # prompt, forced token and padding ignored
    with pytest.raises(ValueError, match="mask entries"):
        collate_padded([([1, 2], [0])], pad_id=7)


def test_loss_matches_the_token_normalised_formula():
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=11, n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    inputs = torch.randint(0, 11, (3, 5))
    targets = torch.randint(0, 11, (3, 5))
    targets[0, :2] = -1
    advantages = torch.tensor([1.0, -0.5, -0.5])
    loss = policy_gradient_loss(model, inputs, targets, advantages, normalizer=2)
    logp = torch.log_softmax(model(inputs).float(), dim=-1)
    expected = 0.0
    for b in range(3):
        for t in range(5):
            if targets[b, t] >= 0:
                expected += logp[b, t, targets[b, t]].item() * advantages[b].item()
    expected = -expected / (13 * 2)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
