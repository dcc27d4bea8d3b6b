"""
DistAdamW: AdamW for the embedding and unembedding under torchrun, ZeRO-2 style.

Each gradient is averaged across ranks and scattered along dim 0; a rank keeps Adam moments only
for its slice, updates that slice, then all-gathers the full parameter. On NCCL this uses
reduce_scatter_tensor / all_gather_into_tensor; gloo lacks them (and AVG), so there DistMuon's
fallbacks run on the tensor's dim-0 chunks. A parameter whose dim 0 does not split evenly across
ranks is replicated instead: every rank averages the full gradient and applies the same update.
"""

import math

import torch
import torch.distributed as dist

from nanochat.muon import _all_gather, _Done, _is_nccl, _reduce_scatter_avg


def _reduce_scatter_rows(output, grad):
    """output <- mean over ranks of grad's rank-th chunk along dim 0."""
    if _is_nccl():
        return dist.reduce_scatter_tensor(output, grad, op=dist.ReduceOp.AVG, async_op=True)
    return _reduce_scatter_avg(output, list(grad.chunk(dist.get_world_size())))


def _all_reduce_avg(tensor):
    if _is_nccl():
        return dist.all_reduce(tensor, op=dist.ReduceOp.AVG, async_op=True)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor.div_(dist.get_world_size())
    return _Done()


def _all_gather_rows(full, part):
    if _is_nccl():
        return dist.all_gather_into_tensor(full, part, async_op=True)
    return _all_gather(list(full.chunk(dist.get_world_size())), part)


def adamw_update(param, grad, state, lr, beta1, beta2, eps, weight_decay):
    """One decoupled-weight-decay Adam step on `param` (a tensor or a slice view of one)."""
    if not state:
        state["step"] = torch.tensor(0, dtype=torch.int64)  # on CPU: reading it never syncs the GPU
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    t = state["step"].item()
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1 ** t
    bias2 = 1 - beta2 ** t
    # same operation order as torch.optim.AdamW, so single-process and sharded runs agree
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)


class DistAdamW(torch.optim.Optimizer):
    """Sharded AdamW. Per-param `lr_mul` / `wd_mul` attributes scale the group's lr / weight decay."""

    def __init__(self, param_groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(param_groups, defaults)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # a checkpoint loaded onto the GPU brings its step counters there; keep them on the host,
        # where reading them (.item(), every step) never waits for the GPU
        for state in self.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].cpu()

    @torch.no_grad()
    def step(self):
        rank, world_size = dist.get_rank(), dist.get_world_size()
        # launch every reduction first so communication overlaps
        jobs = []
        for group in self.param_groups:
            for p in group["params"]:
                assert p.grad is not None, f"DistAdamW: parameter of shape {tuple(p.shape)} has no gradient"
                if p.size(0) % world_size == 0:  # sharded: this rank updates its slice of rows
                    rows = p.size(0) // world_size
                    grad_slice = torch.empty_like(p.grad[:rows])
                    p_slice = p[rank * rows:(rank + 1) * rows]
                    jobs.append((group, p, p_slice, grad_slice, _reduce_scatter_rows(grad_slice, p.grad)))
                else:  # replicated: every rank applies the same update to the whole parameter
                    jobs.append((group, p, p, p.grad, _all_reduce_avg(p.grad)))
        gathers = []
        for group, p, target, grad, handle in jobs:
            handle.wait()
            lr = group["lr"] * getattr(p, "lr_mul", 1.0)
            wd = group["weight_decay"] * getattr(p, "wd_mul", 1.0)
            beta1, beta2 = group["betas"]
            adamw_update(target, grad, self.state[p], lr, beta1, beta2, group["eps"], wd)
            if target is not p:
                gathers.append(_all_gather_rows(p, target))
        for handle in gathers:
            handle.wait()
