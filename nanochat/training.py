"""
Training utilities shared by the stage scripts (base_train, mid_train, chat_sft, chat_rl).

Each script keeps its loop visible top to bottom and calls these for the parts that are the same
everywhere: device helpers, LR/momentum schedules, batch arithmetic, evaluation cadence, loss
smoothing, throughput/MFU, the log line, wandb-or-nothing, checkpoint + exact resume, the report.
"""

import random
import resource

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import (invalidate_step, load_checkpoint, load_rank_state, save_checkpoint,
                                         save_rank_files, saved_world_size)
from nanochat.common import DummyWandb, print0, sum_across_ranks
from nanochat.common import autocast_context  # noqa: F401  (re-exported, like get_report, for the stage scripts)
from nanochat.engine import Engine
from nanochat.report import get_report  # noqa: F401


# dense bf16 peak FLOP/s by GPU name, most specific names first (an "H100 PCIe" is also an "H100")
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 125e12), ("L40S", 362e12),
                   ("L4", 121e12)]


# -----------------------------------------------------------------------------
# device helpers: real work on CUDA, harmless no-ops elsewhere

def synchronize(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mib(device_type):
    """Peak CUDA memory allocated; elsewhere the process's peak resident set size (both in MiB)."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def compile_model(model, device_type, enabled=None):
    """torch.compile on CUDA by default; elsewhere only when asked (CPU compile works but warms up slowly)."""
    enabled = device_type == "cuda" if enabled is None else enabled
    return torch.compile(model, dynamic=False) if enabled else model


# -----------------------------------------------------------------------------
# batch arithmetic and horizon

def grad_accum_steps(total_batch_size, device_batch_size, max_seq_len, world_size):
    tokens_per_fwdbwd = device_batch_size * max_seq_len * world_size
    if tokens_per_fwdbwd <= 0 or total_batch_size % tokens_per_fwdbwd != 0:
        raise ValueError(
            f"total_batch_size={total_batch_size} is not divisible by device_batch_size*max_seq_len*world_size = "
            f"{device_batch_size}*{max_seq_len}*{world_size} = {tokens_per_fwdbwd}; "
            f"pick a total_batch_size that is a multiple of {tokens_per_fwdbwd}")
    return total_batch_size // tokens_per_fwdbwd


def training_horizon(num_iterations, target_flops, target_param_data_ratio, num_params, flops_per_token,
                     total_batch_size):
    """Steps to train: explicit > from a FLOP budget > from a tokens:params ratio (Chinchilla = 20)."""
    if num_iterations > 0:
        return num_iterations
    if target_flops > 0:
        return round(target_flops / (flops_per_token * total_batch_size))
    if target_param_data_ratio > 0:
        return (target_param_data_ratio * num_params) // total_batch_size
    raise ValueError("no training horizon: set num_iterations, target_flops or target_param_data_ratio > 0")


# -----------------------------------------------------------------------------
# schedules

def base_lr_multiplier(it, num_iterations, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0):
    """Linear warmup, flat, then linear warmdown to final_lr_frac."""
    warmup_iters = round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if it <= num_iterations - warmdown_iters:
        return 1.0
    progress = (num_iterations - it) / warmdown_iters
    return progress + (1 - progress) * final_lr_frac


def mid_lr_multiplier(progress):
    """Flat until 80% of training, then linear to 0 (progress in [0, 1])."""
    return 1.0 if progress < 0.8 else max(0.0, 1 - (progress - 0.8) / 0.2)


def linear_decay_lr_multiplier(it, num_iterations):
    """1 -> 0 linearly (SFT, RL)."""
    return 1.0 - it / num_iterations


def muon_momentum(it, warmup_steps=300, start=0.85, end=0.95):
    frac = min(it / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_schedule(optimizers, lr_multiplier, momentum=None):
    """group lr = initial_lr * multiplier for every group; Muon groups also get `momentum`."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier
            if momentum is not None and "momentum" in group and "nesterov" in group:
                group["momentum"] = momentum


# -----------------------------------------------------------------------------
# cadence and logging

def is_due(step, every, last_step=False, skip_first=False):
    """A periodic task runs at the last step and every `every` steps; every <= 0 disables it."""
    return every > 0 and (last_step or (step % every == 0 and not (skip_first and step == 0)))


class LossTracker:
    """EMA of the training loss (beta 0.9), debiased by 1 - beta^(step+1) like Adam's moments."""

    def __init__(self, beta=0.9, ema=0.0):
        self.beta = beta
        self.ema = ema

    def update(self, loss, step):
        self.ema = self.beta * self.ema + (1 - self.beta) * loss
        return self.debiased(step)

    def debiased(self, step):
        return self.ema / (1 - self.beta ** (step + 1))


_unknown_peak_reported = set()


def mfu_percent(flops_per_token, tokens_per_sec, world_size, device_type, device_name=None):
    """Model FLOPs utilization against the GPU's own peak; None off CUDA, or for a GPU whose peak we
    do not know (said once), rather than a figure measured against the wrong peak."""
    if device_type != "cuda":
        return None
    device_name = device_name or torch.cuda.get_device_name()
    peak = next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)
    if peak is None:
        if device_name not in _unknown_peak_reported:
            _unknown_peak_reported.add(device_name)
            print0(f"MFU unknown for {device_name}: add its bf16 peak to nanochat.training.PEAK_BF16_FLOPS")
        return None
    return 100 * flops_per_token * tokens_per_sec / (peak * world_size)


def format_log_line(step, num_iterations, loss, dt, tokens_per_step, lrm=None, grad_norm=None, mfu=None,
                    total_time=0.0):
    parts = [f"step {step:05d}/{num_iterations:05d} ({100 * step / max(num_iterations, 1):.2f}%)",
             f"loss: {loss:.6f}"]
    if grad_norm is not None:
        parts.append(f"grad norm: {grad_norm:.4f}")
    if lrm is not None:
        parts.append(f"lrm: {lrm:.2f}")
    parts.append(f"dt: {dt * 1000:.2f}ms")
    parts.append(f"tok/sec: {int(tokens_per_step / dt) if dt > 0 else 0:,}")
    parts.append(f"mfu: {mfu:.2f}" if mfu is not None else "mfu: n/a")
    parts.append(f"total time: {total_time / 60:.2f}m")
    return " | ".join(parts)


def init_wandb(run, user_config, master_process, project="nanochat"):
    """A wandb run, or DummyWandb when run == 'dummy' or off rank 0."""
    if run == "dummy" or not master_process:
        return DummyWandb()
    try:
        import wandb
    except ImportError:
        raise RuntimeError(f"--run={run} asks for wandb logging but wandb is not installed; "
                           "set up the environment with `source dev/setup_env.sh` (wandb is a dependency) "
                           "or pass --run=dummy") from None
    return wandb.init(project=project, name=run, config=user_config)


# -----------------------------------------------------------------------------
# checkpoint + exact resume

def rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(checkpoint_dir, step, model, optimizers, meta, rank=0):
    """
    Collective under torchrun (every rank calls it): rank 0 removes the step's old meta, every rank
    writes its optimizer shards and RNG state, and only once all are on disk does rank 0 write the
    model and the meta that marks the step complete. `optimizers=None` saves no optimizer state (SFT/RL).
    """
    distributed = dist.is_available() and dist.is_initialized()
    if rank == 0:
        invalidate_step(checkpoint_dir, step)
    if distributed:
        dist.barrier()  # no rank rewrites a shard while the old meta still vouches for it
    optimizer_data = None if optimizers is None else [opt.state_dict() for opt in optimizers]
    save_rank_files(checkpoint_dir, step, optimizer_data, rng_state(), rank)
    if distributed:
        dist.barrier()  # all shards are on disk before the meta marks the step complete
    if rank == 0:
        world_size = dist.get_world_size() if distributed else 1
        save_checkpoint(checkpoint_dir, step, model.state_dict(), None, dict(meta, world_size=world_size), rank=0)


def check_resume_world_size(checkpoint_dir, step, world_size):
    """Refuse, in every stage alike, to resume a checkpoint written by a different number of ranks:
    optimizer shards and data positions belong to the ranks that wrote them."""
    saved = saved_world_size(checkpoint_dir, step)
    if saved is not None and saved != world_size:
        raise ValueError(
            f"checkpoint step {step} in {checkpoint_dir} was written by {saved} rank(s) but this run has "
            f"{world_size}: its optimizer shards and data positions belong to the ranks that wrote them. "
            f"Resume with {saved} process(es) in total (torchrun --nnodes * --nproc_per_node = {saved}).")


def load_training_checkpoint(checkpoint_dir, step, model, optimizers, device, rank=0):
    """Restore model, optimizers and RNG saved by save_training_checkpoint; returns the meta dict."""
    if optimizers is not None:
        check_resume_world_size(checkpoint_dir, step, dist.get_world_size() if dist.is_initialized() else 1)
    model_data, optimizer_data, meta = load_checkpoint(checkpoint_dir, step, device,
                                                       load_optimizer=optimizers is not None, rank=rank)
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in model_data.items()}, strict=True)
    if optimizers is not None:
        if len(optimizer_data) != len(optimizers):
            raise ValueError(f"checkpoint step {step} in {checkpoint_dir} holds {len(optimizer_data)} optimizer "
                             f"states but this run has {len(optimizers)} optimizers")
        for opt, state in zip(optimizers, optimizer_data):
            opt.load_state_dict(state)
    state = load_rank_state(checkpoint_dir, step, rank)
    if state is None:
        print0(f"Warning: checkpoint step {step} has no RNG state for rank {rank}; resuming with fresh RNG")
    else:
        set_rng_state(state)
    return meta


# -----------------------------------------------------------------------------
# samples printed during training

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]


def sample_completions(model, tokenizer, prompts=SAMPLE_PROMPTS, max_tokens=16):
    """Greedy completions (prompt included), through the KV-cached Engine."""
    engine = Engine(model, tokenizer)
    bos = tokenizer.get_bos_token_id()
    samples = []
    for prompt in prompts:
        tokens = tokenizer.encode(prompt, prepend=bos)
        results, _ = engine.generate_batch(tokens, num_samples=1, max_tokens=max_tokens, temperature=0)
        samples.append(tokenizer.decode(results[0]))
    return samples


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def gather_loader_states(state):
    """Every rank's loader state, as a list indexed by rank (checkpoint meta is written by rank 0 only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def any_rank(flag, device):
    """True on every rank if `flag` is True on any rank, so all ranks leave a loop together."""
    return sum_across_ranks([int(flag)], device)[0] > 0


def setup_optimizers(model, cfg, init_lr_frac=1.0):
    """The model's [AdamW, Muon] pair with the run's learning rates, every group started at
    `init_lr_frac` of them (finetuning stages start lower than pretraining)."""
    optimizers = model.setup_optimizers(unembedding_lr=cfg.unembedding_lr, embedding_lr=cfg.embedding_lr,
                                        matrix_lr=cfg.matrix_lr, weight_decay=cfg.weight_decay)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = group["lr"] * init_lr_frac
    return optimizers
