"""
Run under `torchrun --nproc_per_node=2` on CPU (gloo): DistMuon / DistAdamW fed different
per-rank gradients must reach the same parameters as Muon / torch AdamW fed the rank average.
Exits non-zero (with the mismatch) when they disagree. Used by tests/test_muon.py and test_adamw.py.
"""

import os
import sys

import torch
import torch.distributed as dist

from nanochat.adamw import DistAdamW
from nanochat.muon import DistMuon, Muon


def make_params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def rank_grads(shapes, step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(*s, generator=g) for s in shapes]


def check(kind, steps=4):
    rank, world = dist.get_rank(), dist.get_world_size()
    if kind == "muon":
        # 5 params of one shape (blocks of 2 with a padded tail) and one tall shape
        shapes = [(8, 16)] * 5 + [(24, 8)]
        make_dist = lambda ps: DistMuon(ps, lr=0.02, momentum=0.9)
        make_ref = lambda ps: Muon(ps, lr=0.02, momentum=0.9)
    else:
        # dim 0 = 266 is sharded across 2 ranks (big enough for vectorized kernels); 5 is replicated
        shapes = [(266, 32), (5, 3)]
        kw = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
        make_dist = lambda ps: DistAdamW([dict(params=ps)], **kw)
        # the single-process CPU optimizer of GPT.setup_optimizers (torch's default, non-fused kernel)
        make_ref = lambda ps: torch.optim.AdamW([dict(params=ps)], **kw)
    dist_params, ref_params = make_params(shapes, 0), make_params(shapes, 0)
    dist_opt, ref_opt = make_dist(dist_params), make_ref(ref_params)
    for step in range(steps):
        for p, g in zip(dist_params, rank_grads(shapes, step, rank)):
            p.grad = g
        all_grads = [rank_grads(shapes, step, r) for r in range(world)]
        for i, p in enumerate(ref_params):
            p.grad = sum(grads[i] for grads in all_grads) / world
        dist_opt.step()
        ref_opt.step()
    worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(dist_params, ref_params))
    # every rank must hold the same full parameters
    for p in dist_params:
        gathered = [torch.empty_like(p) for _ in range(world)]
        dist.all_gather(gathered, p.detach().clone())
        assert all(torch.equal(gathered[0], t) for t in gathered), f"{kind}: ranks disagree"
    print(f"rank {rank} {kind}: max relative difference vs single process = {worst:.3e}")
    assert worst < 1e-5, f"{kind}: distributed result differs from single process by {worst:.3e}"


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        for kind in sys.argv[1:] or ["muon", "adamw"]:
            check(kind)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    # Skip interpreter teardown: torch's C++ static destructors occasionally abort ("terminate called
    # without an active exception") after a gloo run, which would turn a passed check into a failure.
    sys.stdout.flush()
    os._exit(0)
