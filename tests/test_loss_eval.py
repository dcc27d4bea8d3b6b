"""evaluate_bpb: nats over bytes, special tokens and ignored targets excluded."""

import math

import torch

from nanochat.loss_eval import evaluate_bpb


class FixedLossModel:
    """Per-token loss = target id / 10, so the expected sum is easy to write down."""

    def __call__(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none"
        return torch.where(y >= 0, y.float() / 10, 0.0).view(-1)


def test_bpb_formula_with_special_and_ignored_tokens():
    token_bytes = torch.tensor([1, 2, 3, 0])  # token 3 is a special token (0 bytes)
    x = torch.zeros(2, 3, dtype=torch.long)
    y1 = torch.tensor([[0, 1, 2], [3, 3, 1]])
    y2 = torch.tensor([[2, -1, -1], [0, 0, 3]])
    bpb = evaluate_bpb(FixedLossModel(), [(x, y1), (x, y2)], steps=2, token_bytes=token_bytes)
    counted = [0, 1, 2, 1, 2, 0, 0]  # targets with bytes > 0
    nats = sum(t / 10 for t in counted)
    num_bytes = sum(token_bytes[t].item() for t in counted)
    assert math.isclose(bpb, nats / (math.log(2) * num_bytes), rel_tol=1e-6)


def test_only_the_requested_steps_are_read():
    token_bytes = torch.tensor([1, 1])
    x = torch.zeros(1, 2, dtype=torch.long)
    batches = [(x, torch.tensor([[1, 1]])), (x, torch.tensor([[0, 0]]))]
    bpb = evaluate_bpb(FixedLossModel(), iter(batches), steps=1, token_bytes=token_bytes)
    assert math.isclose(bpb, 0.2 / (math.log(2) * 2), rel_tol=1e-6)


def test_no_bytes_gives_inf():
    token_bytes = torch.tensor([0, 0])
    x = torch.zeros(1, 2, dtype=torch.long)
    assert evaluate_bpb(FixedLossModel(), [(x, torch.tensor([[1, -1]]))], 1, token_bytes) == float("inf")


def test_with_a_real_model_uniform_logits_give_log2_vocab_per_token_over_bytes():
    from nanochat.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    model.init_weights()  # zero lm_head: uniform predictions
    token_bytes = torch.full((32,), 2)
    x = torch.randint(0, 32, (2, 8))
    bpb = evaluate_bpb(model, [(x, x)], 1, token_bytes)
    assert math.isclose(bpb, math.log2(32) / 2, rel_tol=1e-5)
