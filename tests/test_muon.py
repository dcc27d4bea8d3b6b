"""Muon and DistMuon: Newton-Schulz orthogonalization, the update rule, resume, gloo ranks."""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from nanochat.muon import DistMuon, Muon, newton_schulz_dtype, zeropower_via_newtonschulz5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shape", [(16, 48), (48, 16)])
def test_newtonschulz_orthogonalizes_wide_and_tall(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    X = zeropower_via_newtonschulz5(G, steps=5)
    assert X.shape == G.shape and X.dtype == newton_schulz_dtype(G.device)
    s = torch.linalg.svdvals(X.float())
    assert s.min() > 0.4 and s.max() < 1.6, s  # all singular values pushed towards 1
    assert torch.linalg.svdvals(G).max() / torch.linalg.svdvals(G).min() > 2  # the input was not


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4, 64, 160), (4, 160, 64)])  # big enough for blocked kernels
def test_a_stack_is_orthogonalized_exactly_as_its_matrices_one_by_one(shape, dtype):
    # Muon batches same-shape matrices, DistMuon takes them one at a time: they must agree bit for bit
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    stacked = zeropower_via_newtonschulz5(G, steps=5, dtype=dtype)
    assert stacked.dtype == dtype
    for i in range(shape[0]):
        assert torch.equal(stacked[i], zeropower_via_newtonschulz5(G[i], steps=5, dtype=dtype))


def test_muon_groups_by_numel_and_applies_the_rule():
    a, b, c = (torch.nn.Parameter(torch.randn(4, 8)) for _ in range(3))
    d = torch.nn.Parameter(torch.randn(8, 4))  # same numel as a: same group
    e = torch.nn.Parameter(torch.randn(12, 4))
    opt = Muon([a, b, c, d, e], lr=0.1, momentum=0.9)
    assert [len(g["params"]) for g in opt.param_groups] == [4, 1]
    before = e.detach().clone()
    grad = torch.randn(12, 4)
    for p in (a, b, c, d):
        p.grad = torch.zeros_like(p)
    e.grad = grad.clone()
    opt.step()
    # first step from a zero buffer: buf = 0.1 g, nesterov g' = g.lerp(buf, 0.9)
    buf = 0.1 * grad
    expected_dir = zeropower_via_newtonschulz5(grad.lerp(buf, 0.9), 5).float()
    expected = before - 0.1 * math.sqrt(12 / 4) * expected_dir
    assert torch.allclose(e.detach(), expected, atol=1e-6)
    assert torch.equal(opt.state[e]["momentum_buffer"], buf)


def test_muon_requires_grads():
    p = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(AssertionError, match="no gradient"):
        Muon([p]).step()


def _train(opt_cls, params, steps, seed):
    opt = opt_cls(params, lr=0.05, momentum=0.95)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt


def test_muon_state_dict_resumes_exactly():
    ref = [torch.nn.Parameter(torch.ones(6, 3) * i) for i in range(3)]
    opt = _train(Muon, ref, 2, seed=1)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the live buffers
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    g = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=g) for p in ref] for _ in range(2)]
    for step_grads in grads:
        for p, gr in zip(ref, step_grads):
            p.grad = gr.clone()
        opt.step()
    opt2 = Muon(resumed, lr=0.05, momentum=0.95)
    opt2.load_state_dict(saved)
    for step_grads in grads:
        for p, gr in zip(resumed, step_grads):
            p.grad = gr.clone()
        opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, resumed))


@pytest.fixture
def single_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_distmuon_matches_muon_on_one_rank(single_rank_group):
    shapes = [(4, 8), (4, 8), (8, 4), (16, 8)]
    ref = [torch.nn.Parameter(torch.randn(*s, generator=torch.Generator().manual_seed(i)))
           for i, s in enumerate(shapes)]
    got = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt, dist_opt = Muon(ref, lr=0.03), DistMuon(got, lr=0.03)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for a, b in zip(ref, got):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        ref_opt.step()
        dist_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    # its state survives a save/load round trip
    fresh = DistMuon([torch.nn.Parameter(p.detach().clone()) for p in got], lr=0.03)
    fresh.load_state_dict(dist_opt.state_dict())
    assert len(fresh.state) == len(got)


def test_distmuon_rejects_non_matrices(single_rank_group):
    with pytest.raises(AssertionError, match="2-D"):
        DistMuon([torch.nn.Parameter(torch.randn(4))])


def run_two_ranks(kind):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "tests", "dist_optim_check.py"), kind]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_distmuon_two_gloo_ranks_match_single_process_muon():
    stdout = run_two_ranks("muon")
    # exit code 0 means every rank passed its assertion; their output lines may interleave
    assert "muon: max relative difference vs single process" in stdout
