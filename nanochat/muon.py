"""
Muon: momentum SGD whose update is orthogonalized by a Newton-Schulz iteration.
Used for every 2-D weight matrix inside the Transformer blocks.

`Muon` is the single-process optimizer. `DistMuon` shards the work across ranks: each parameter
has one owner rank that receives the averaged gradient, keeps the momentum buffer, computes the
update and broadcasts the new weights. It runs on NCCL (reduce_scatter / all_gather) and on gloo,
which lacks reduce_scatter: there every rank all-reduces the block and keeps its own slot.

Speed: matrices of the same shape are orthogonalized together, as one batch of matrix products
(in bf16 a batched product gives each matrix the bits a single one would), and
momentum and updates use torch's foreach kernels instead of a Python loop of small ops.
"""

import functools
import math

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_dtype(device):
    """
    bf16 where matrix products in bf16 are native (CUDA; CPUs with AMX or AVX512-BF16), float32
    elsewhere. Measured on 2-core CPUs, d4's 24 matrices: with AMX bf16 is 4x faster (26 vs 103 ms
    batched); without native bf16 the emulated products are slower than float32 (241 vs 168 ms).
    """
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def _newtonschulz5(G, steps, dtype):
    """
    Quintic Newton-Schulz iteration on a matrix or a stack of matrices (..., m, n); returns
    ~U S' V^T per matrix with S' roughly in [0.5, 1.5].
    """
    assert G.ndim >= 2, f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}"
    a, b, c = NS_COEFFICIENTS
    single = G.ndim == 2
    X = G.to(dtype)
    X = X.unsqueeze(0) if single else X.reshape(-1, *G.shape[-2:])
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A in one product
        X = torch.baddbmm(X, B, X, beta=a, alpha=1)  # a*X + B@X
    if transposed:
        X = X.mT
    return X[0] if single else X.reshape(G.shape)


@functools.cache
def _compiled():
    return torch.compile(_newtonschulz5)


def zeropower_via_newtonschulz5(G, steps, compile=None, dtype=None):
    """
    Orthogonalize G (a matrix or a stack of them). `compile=None` compiles on CUDA only: on CPU
    the products dominate and compiling adds warm-up for no gain. `dtype=None` picks by device.
    """
    compile = G.is_cuda if compile is None else compile
    dtype = newton_schulz_dtype(G.device) if dtype is None else dtype
    fn = _compiled() if compile else _newtonschulz5
    if dtype == torch.float32 and G.ndim > 2:
        # float32 batched products round differently from single ones (bf16 ones do not), and
        # DistMuon orthogonalizes one matrix at a time: go matrix by matrix so both agree exactly
        return torch.stack([fn(g, steps, dtype) for g in G])
    return fn(G, steps, dtype)


def _muon_update(params, grads, states, group):
    """The Muon rule for same-shape parameters, batched; shared by Muon and DistMuon so both do
    identical math. `grads` are overwritten (with the Nesterov blend)."""
    for state, grad in zip(states, grads):
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
    bufs = [state["momentum_buffer"] for state in states]
    momentum = group["momentum"]
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    if group["nesterov"]:
        torch._foreach_lerp_(grads, bufs, momentum)
    blended = grads if group["nesterov"] else bufs
    update = zeropower_via_newtonschulz5(torch.stack(blended), steps=group["ns_steps"], compile=group.get("compile"))
    p = params[0]
    scale = math.sqrt(max(1.0, p.size(-2) / p.size(-1)))
    torch._foreach_add_(params, list(update.to(p.dtype).unbind(0)), alpha=-group["lr"] * scale)


def _by_shape(params):
    """Lists of same-shape parameters, in first-seen order."""
    buckets = {}
    for p in params:
        buckets.setdefault(tuple(p.shape), []).append(p)
    return list(buckets.values())


class Muon(torch.optim.Optimizer):
    """
    Single-process Muon. Parameters with the same number of elements share a param group (as in
    the original, so its checkpoints load); within a group, each shape is updated as one batch.
    `lr` and `momentum` are read from the groups on every step, so schedulers can set them.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, compile=None):
        params = list(params)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, compile=compile)
        groups = [dict(params=[p for p in params if p.numel() == size]) for size in sorted({p.numel() for p in params})]
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                assert p.grad is not None, f"Muon: parameter of shape {tuple(p.shape)} has no gradient"
            for same_shape in _by_shape(group["params"]):
                _muon_update(same_shape, [p.grad for p in same_shape], [self.state[p] for p in same_shape], group)


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
    """Distributed Muon. Params (all 2-D) are grouped by shape and walked in blocks of world_size: slot i of
    a block is rank i's, which receives its averaged gradient, updates it and all-gathers the new value."""

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
        blocks = []  # (group, padding, up to world_size params): slot i of a block is rank i's
        for group, zero in zip(self.param_groups, self._zero_buffers):
            params = group["params"]
            for p in params:
                assert p.grad is not None, f"DistMuon: parameter of shape {tuple(p.shape)} has no gradient"
            blocks.extend((group, zero, params[base:base + world_size]) for base in range(0, len(params), world_size))

        # phase 1: launch all gradient reductions so communication overlaps
        pending = []
        for group, zero, block in blocks:
            inputs = [p.grad for p in block] + [zero] * (world_size - len(block))
            output = block[rank].grad if rank < len(block) else torch.empty_like(zero)
            pending.append(_reduce_scatter_avg(output, inputs))

        # phase 2: owners update, then everybody receives the new weights
        gathers = []
        for (group, zero, block), handle in zip(blocks, pending):
            handle.wait()
            if rank < len(block):
                p = block[rank]
                _muon_update([p], [p.grad], [self.state[p]], group)
            outputs = block + [torch.empty_like(zero) for _ in range(world_size - len(block))]
            gathers.append(_all_gather(outputs, block[rank] if rank < len(block) else zero))
        for handle in gathers:
            handle.wait()
