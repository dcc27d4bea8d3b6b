"""Shared training utilities: schedules, batch arithmetic, cadence, logging, checkpoint + resume."""

import random

import pytest
import torch

from nanochat import training as tr
from nanochat.common import DummyWandb
from nanochat.gpt import GPT, GPTConfig


def test_base_lr_schedule_warmup_flat_warmdown():
    f = lambda it: tr.base_lr_multiplier(it, 100, warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(50) == 1.0 and f(80) == 1.0
    assert f(90) == pytest.approx(0.5 + 0.5 * 0.1)
    assert f(100) == pytest.approx(0.1)
    assert tr.base_lr_multiplier(100, 100) == 0.0  # defaults: no warmup, warmdown to 0


def test_mid_sft_rl_schedules_and_muon_momentum():
    assert tr.mid_lr_multiplier(0.5) == 1.0 and tr.mid_lr_multiplier(0.9) == pytest.approx(0.5)
    assert tr.mid_lr_multiplier(1.0) == pytest.approx(0.0)
    assert tr.linear_decay_lr_multiplier(0, 10) == 1.0 and tr.linear_decay_lr_multiplier(5, 10) == 0.5
    assert tr.muon_momentum(0) == pytest.approx(0.85)
    assert tr.muon_momentum(150) == pytest.approx(0.90)
    assert tr.muon_momentum(1000) == pytest.approx(0.95)


def test_grad_accum_steps_and_its_error():
    assert tr.grad_accum_steps(524288, 32, 2048, 8) == 1
    assert tr.grad_accum_steps(524288, 16, 2048, 1) == 16
    with pytest.raises(ValueError) as e:
        tr.grad_accum_steps(1000, 2, 64, 3)
    assert "total_batch_size=1000 is not divisible by device_batch_size*max_seq_len*world_size = 2*64*3 = 384" \
        in str(e.value)


def test_training_horizon_precedence_and_chinchilla():
    assert tr.training_horizon(7, 1e18, 20, 1, 1, 1) == 7
    assert tr.training_horizon(-1, 3.0e9 * 524288 * 10, 20, 1, 3.0e9, 524288) == 10
    # Chinchilla column of the size table
    assert tr.training_horizon(-1, -1.0, 20, 560_988_160, 1, 524288) == 21_400
    assert tr.training_horizon(-1, -1.0, 20, 1_879_048_192, 1, 524288) == 71_680
    with pytest.raises(ValueError, match="no training horizon"):
        tr.training_horizon(-1, -1.0, -1, 1, 1, 1)


def test_is_due():
    assert tr.is_due(0, 250) and tr.is_due(500, 250) and not tr.is_due(10, 250)
    assert not tr.is_due(0, 250, skip_first=True)
    assert tr.is_due(13, 250, last_step=True)
    assert not tr.is_due(13, -1, last_step=True) and not tr.is_due(0, -1)


def test_loss_tracker_is_debiased():
    t = tr.LossTracker()
    assert t.update(3.0, 0) == pytest.approx(3.0)
    assert t.update(3.0, 1) == pytest.approx(3.0)
    assert t.update(1.0, 2) == pytest.approx((0.9 * 0.9 * 0.1 * 3 + 0.9 * 0.1 * 3 + 0.1 * 1) / (1 - 0.9 ** 3))


def test_mfu_and_log_line():
    assert tr.mfu_percent(1e9, 1e5, 1, "cpu") is None
    assert tr.mfu_percent(989e9, 1000.0, 2, "cuda", device_name="NVIDIA H100 80GB HBM3") == pytest.approx(50.0)
    line = tr.format_log_line(5, 100, 3.25, 0.5, 1000, lrm=1.0, grad_norm=0.5, mfu=None, total_time=120)
    assert line.startswith("step 00005/00100 (5.00%) | loss: 3.250000 | grad norm: 0.5000 | lrm: 1.00")
    assert "tok/sec: 2,000" in line and "mfu: n/a" in line and "total time: 2.00m" in line


def test_device_helpers_are_noops_off_cuda():
    with tr.autocast_context("cpu"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    tr.synchronize("cpu")
    assert tr.peak_memory_mib("cpu") > 0
    model = torch.nn.Linear(2, 2)
    assert tr.compile_model(model, "cpu") is model


def test_wandb_is_dummy_unless_asked():
    assert isinstance(tr.init_wandb("dummy", {}, True), DummyWandb)
    assert isinstance(tr.init_wandb("myrun", {}, False), DummyWandb)


def tiny():
    model = GPT(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    model.init_weights()
    return model, model.setup_optimizers()


def train(model, optimizers, steps, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for it in range(steps):
        x = torch.randint(0, 32, (2, 8), generator=g)
        loss = model(x, x.roll(-1, 1))
        loss.backward()
        tr.apply_schedule(optimizers, 1.0 - it / 20, momentum=tr.muon_momentum(it))
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_apply_schedule_sets_lr_everywhere_and_momentum_on_muon_only():
    model, (adamw, muon) = tiny()
    tr.apply_schedule([adamw, muon], 0.5, momentum=0.9)
    assert all(g["lr"] == 0.5 * g["initial_lr"] for g in adamw.param_groups + muon.param_groups)
    assert all(g["momentum"] == 0.9 for g in muon.param_groups)
    assert all("momentum" not in g for g in adamw.param_groups)


def test_training_checkpoint_restores_model_optimizers_and_rng(tmp_path):
    torch.manual_seed(0)
    model, optimizers = tiny()
    train(model, optimizers, 3, seed=1)
    random.seed(5)
    torch.manual_seed(5)
    tr.save_training_checkpoint(str(tmp_path), 3, model, optimizers, {"step": 3, "model_config": {}})
    expected_rand = (random.random(), torch.rand(1))
    expected_losses = train(model, optimizers, 3, seed=2)

    torch.manual_seed(123)
    model2, optimizers2 = tiny()  # different init: everything must come from the checkpoint
    meta = tr.load_training_checkpoint(str(tmp_path), 3, model2, optimizers2, "cpu")
    assert meta["step"] == 3
    assert (random.random(), torch.rand(1)) == expected_rand
    assert train(model2, optimizers2, 3, seed=2) == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA B200", 2250e12)])
def test_mfu_uses_the_peak_of_the_gpu_it_runs_on(name, peak):
    from nanochat.training import mfu_percent
    assert mfu_percent(1e9, peak / 1e9 / 2, 1, "cuda", device_name=name) == pytest.approx(50.0)


def test_mfu_of_an_unknown_gpu_is_not_made_up(capsys):
    from nanochat.training import mfu_percent
    assert mfu_percent(1e9, 1e5, 1, "cuda", device_name="Some Future GPU") is None
    assert "MFU unknown for Some Future GPU" in capsys.readouterr().out
    assert mfu_percent(1e9, 1e5, 8, "cpu") is None
