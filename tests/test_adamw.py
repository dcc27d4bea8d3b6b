"""DistAdamW: same math as torch's fused AdamW, lr_mul/wd_mul, resume, two gloo ranks."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from nanochat.adamw import DistAdamW

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)


@pytest.fixture
def single_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def params_like(seed, shapes=((8, 4), (6, 3))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def run_steps(opt, params, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_distadamw_matches_fused_adamw(single_rank_group):
    ref, got = params_like(0), params_like(0)
    ref_opt = torch.optim.AdamW([dict(params=ref[:1], lr=0.01), dict(params=ref[1:], lr=0.2)], fused=True, **KW)
    dist_opt = DistAdamW([dict(params=got[:1], lr=0.01), dict(params=got[1:], lr=0.2)], **KW)
    run_steps(ref_opt, ref, 5, seed=3)
    run_steps(dist_opt, got, 5, seed=3)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a - b).abs().max()
    assert any(not torch.equal(a, b0) for a, b0 in zip(got, params_like(0)))  # it did move


def test_lr_mul_and_wd_mul(single_rank_group):
    (p,) = params_like(0, shapes=((4, 4),))
    (q,) = params_like(0, shapes=((4, 4),))
    q.lr_mul, q.wd_mul = 0.0, 0.0  # frozen
    opt = DistAdamW([dict(params=[p, q], lr=0.1)], **KW)
    before = q.detach().clone()
    run_steps(opt, [p, q], 2, seed=1)
    assert torch.equal(q, before)
    assert not torch.equal(p, before)


def test_distadamw_state_dict_resumes_exactly(single_rank_group):
    a, b = params_like(0), params_like(0)
    opt_a = DistAdamW([dict(params=a, lr=0.05)], **KW)
    run_steps(opt_a, a, 3, seed=1)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = DistAdamW([dict(params=b, lr=0.05)], **KW)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # state_dict() shares the live buffers
    run_steps(opt_a, a, 3, seed=2)
    run_steps(opt_b, b, 3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_distadamw_two_gloo_ranks_match_single_process_adamw():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "tests", "dist_optim_check.py"), "adamw"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "adamw: max relative difference vs single process" in out.stdout  # rc 0: every rank passed


def test_distadamw_is_bit_identical_to_the_default_cpu_adamw(single_rank_group):
    # what GPT.setup_optimizers uses for one CPU process; exact agreement makes 1-process and
    # multi-rank CPU runs train identically
    ref, got = params_like(0, shapes=((266, 64),)), params_like(0, shapes=((266, 64),))
    ref_opt = torch.optim.AdamW([dict(params=ref, lr=0.007)], **KW)
    dist_opt = DistAdamW([dict(params=got, lr=0.007)], **KW)
    run_steps(ref_opt, ref, 4, seed=3)
    run_steps(dist_opt, got, 4, seed=3)
    assert torch.equal(ref[0], got[0])
