"""The model: sizes and FLOPs from depth (SPEC §8.4), forward/loss, optimizer setup, sampling."""

import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig, config_for_depth

# depth -> (sequence_len, params, FLOPs/token, relative tolerance of the table's FLOPs figure)
SIZE_TABLE = {
    4: (1024, 36_700_160, 1.32e8, 5e-3),
    12: (2048, 185_597_952, 1.04e9, 5e-3),
    20: (2048, 560_988_160, 3.491758e9, 1e-6),
    26: (2048, 1_081_999_360, 6.90e9, 5e-3),
    32: (2048, 1_879_048_192, 1.207960e10, 1e-6),
}


@pytest.mark.parametrize("depth", sorted(SIZE_TABLE))
def test_params_and_flops_match_the_size_table(depth):
    seq_len, params, flops, rel = SIZE_TABLE[depth]
    config = config_for_depth(depth, seq_len, 65536)
    with torch.device("meta"):  # no memory, no init: just shapes
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert params == 2 * 65536 * config.n_embd + 12 * depth * config.n_embd ** 2
    assert model.estimate_flops() == pytest.approx(flops, rel=rel)


def test_config_for_depth_dims_and_bad_depth():
    config = config_for_depth(20, 2048, 65536)
    assert (config.n_embd, config.n_head, config.n_kv_head, config.n_layer) == (1280, 10, 10, 20)
    with pytest.raises(ValueError, match=r"depth=5 .*nearest valid depths: 4 or 6"):
        config_for_depth(5, 2048, 65536)


def tiny_model(vocab_size=64, seq_len=16, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32))
    model.init_weights()
    return model


def test_forward_loss_shapes_and_initial_loss():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 64)
    assert logits.abs().max() == 0  # lm_head starts at zero
    loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(64), rel=1e-5)
    targets = idx.clone()
    targets[:, :8] = -1  # ignored positions
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (32,)
    assert (per_token.view(2, 16)[:, :8] == 0).all()


def test_setup_optimizers_groups_and_initial_lr():
    model = tiny_model()
    adamw, muon = model.setup_optimizers(unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02)
    scale = (32 / 768) ** -0.5
    lrs = sorted(group["lr"] for group in adamw.param_groups)
    assert lrs == pytest.approx(sorted([0.004 * scale, 0.2 * scale]))
    assert all(group["initial_lr"] == group["lr"] for opt in (adamw, muon) for group in opt.param_groups)
    muon_params = {id(p) for group in muon.param_groups for p in group["params"]}
    assert muon_params == {id(p) for p in model.transformer.h.parameters()}


def test_a_few_optimizer_steps_reduce_the_loss():
    model = tiny_model()
    optimizers = model.setup_optimizers()
    idx = torch.randint(0, 64, (4, 16))
    first = None
    for _ in range(10):
        loss = model(idx, idx.roll(-1, dims=1))
        first = loss.item() if first is None else first
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    assert loss.item() < first - 0.5


def test_greedy_generate_is_deterministic():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    a = list(model.generate([1, 2, 3], max_tokens=6, temperature=0))
    b = list(model.generate([1, 2, 3], max_tokens=6, temperature=0))
    assert a == b and len(a) == 6
    sampled = list(model.generate([1, 2, 3], max_tokens=6, temperature=1.0, top_k=5, seed=7))
    assert sampled == list(model.generate([1, 2, 3], max_tokens=6, temperature=1.0, top_k=5, seed=7))
