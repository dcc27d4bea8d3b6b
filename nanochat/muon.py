"""
Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.
Used for every 2-D weight matrix inside the Transformer blocks.

`Muon` is the single-process optimizer. `DistMuon` shards the work across ranks: each parameter
has one owner rank that receives the averaged gradient, keeps the momentum buffer, computes the
update and broadcasts the new weights. It runs on NCCL (reduce_scatter / all_gather) and on gloo,
which lacks reduce_scatter: there every rank all-reduces the block and keeps its own slot.
"""

import math

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _newtonschulz5(G, steps):
    """Quintic Newton-Schulz iteration in bf16; returns ~U S' V^T with S' roughly in [0.5, 1.5]."""
    assert G.ndim >= 2, f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}"
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16()
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X


_compiled_newtonschulz5 = None


def _compiled():
    global _compiled_newtonschulz5
    if _compiled_newtonschulz5 is None:
        _compiled_newtonschulz5 = torch.compile(_newtonschulz5)
    return _compiled_newtonschulz5


def zeropower_via_newtonschulz5(G, steps, compile=None):
    """
    Orthogonalize G. `compile=None` compiles on CUDA only: CPU compilation works (it needs a C++
    compiler) but costs many seconds of warm-up for a small gain, so there it is opt-in.
    """
    if compile is None:
        compile = G.is_cuda
    fn = _compiled() if compile else _newtonschulz5
    return fn(G, steps)


def _muon_update(p, grad, state, group):
    """The Muon rule for one parameter; shared by Muon and DistMuon so both do identical math."""
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad)
    buf = state["momentum_buffer"]
    momentum = group["momentum"]
    buf.lerp_(grad, 1 - momentum)
    g = grad.lerp_(buf, momentum) if group["nesterov"] else buf
    g = zeropower_via_newtonschulz5(g, steps=group["ns_steps"], compile=group.get("compile"))
    scale = math.sqrt(max(1.0, p.size(-2) / p.size(-1)))
    p.add_(g, alpha=-group["lr"] * scale)


class Muon(torch.optim.Optimizer):
    """
    Single-process Muon. Parameters with the same number of elements share a param group.
    `lr` and `momentum` are read from the groups on every step, so schedulers can set them.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, compile=None):
        params = list(params)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, compile=compile)
        groups = []
        for size in sorted({p.numel() for p in params}):
            groups.append(dict(params=[p for p in params if p.numel() == size]))
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                assert p.grad is not None, f"Muon: parameter of shape {tuple(p.shape)} has no gradient"
                _muon_update(p, p.grad, self.state[p], group)


class _Done:
    """A finished collective, so the NCCL and gloo paths can be awaited the same way."""

    def wait(self):
        pass


def _is_nccl():
    return dist.get_backend() == "nccl"


def _reduce_scatter_avg(output, inputs):
    """output <- mean over ranks of inputs[rank]."""
    if _is_nccl():
        return dist.reduce_scatter(output, inputs, op=dist.ReduceOp.AVG, async_op=True)
    # gloo: no reduce_scatter, no AVG. One all_reduce of the stacked block, keep our slot.
    stacked = torch.stack(inputs)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    output.copy_(stacked[dist.get_rank()]).div_(dist.get_world_size())
    return _Done()


def _all_gather(outputs, tensor):
    if _is_nccl():
        return dist.all_gather(outputs, tensor, async_op=True)
    # gloo: the input must not alias one of the outputs. Synchronous: CPU gains nothing from
    # overlap, and pending gloo work at process-group teardown can abort the process.
    dist.all_gather(outputs, tensor.clone())
    return _Done()


class DistMuon(torch.optim.Optimizer):
    """
    Distributed Muon. Params (all 2-D) are grouped by shape; within a group they are walked in
    blocks of world_size and param `base + rank` of each block is owned by this rank.
    Phase 1 averages the block's gradients into the owners; phase 2 lets each owner update its
    param and all-gathers the new values to every rank.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, compile=None):
        params = list(params)
        for p in params:
            assert p.ndim == 2, f"DistMuon only handles 2-D parameters, got shape {tuple(p.shape)}"
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, compile=compile)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == shape]) for shape in shapes]
        super().__init__(groups, defaults)
        # padding for the last block of a group when it has fewer params than ranks
        self._zero_buffers = [torch.zeros_like(g["params"][0]) for g in self.param_groups]
        if dist.get_rank() == 0:
            for shape, group in zip(shapes, self.param_groups):
                print(f"DistMuon: {len(group['params'])} params of shape {shape}")

    @torch.no_grad()
    def step(self):
        rank, world_size = dist.get_rank(), dist.get_world_size()
        for group in self.param_groups:
            for p in group["params"]:
                assert p.grad is not None, f"DistMuon: parameter of shape {tuple(p.shape)} has no gradient"

        # phase 1: launch all gradient reductions so communication overlaps
        pending = []
        for group, zero in zip(self.param_groups, self._zero_buffers):
            params = group["params"]
            for base in range(0, len(params), world_size):
                inputs = [params[base + i].grad if base + i < len(params) else zero for i in range(world_size)]
                owned = base + rank
                output = params[owned].grad if owned < len(params) else torch.empty_like(zero)
                pending.append(_reduce_scatter_avg(output, inputs))

        # phase 2: owners update, then everybody receives the new weights
        gathers = []
        index = 0
        for group, zero in zip(self.param_groups, self._zero_buffers):
            params = group["params"]
            for base in range(0, len(params), world_size):
                pending[index].wait()
                index += 1
                owned = base + rank
                if owned < len(params):
                    p = params[owned]
                    _muon_update(p, p.grad, self.state[p], group)
                    source = p
                else:
                    source = zero
                outputs = [params[base + i] if base + i < len(params) else torch.empty_like(zero)
                           for i in range(world_size)]
                gathers.append(_all_gather(outputs, source))
        for handle in gathers:
            handle.wait()
