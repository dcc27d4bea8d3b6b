"""Bits per byte: a validation loss that does not depend on the tokenizer's vocabulary size."""

import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """nats / (ln 2 * bytes): per-token losses and target byte lengths summed over `steps` batches and the ranks.
    Targets with 0 bytes (special tokens) and ignored ones (< 0) count for neither; no bytes at all gives inf."""
    device = token_bytes.device
    total_nats = torch.tensor(0.0, dtype=torch.float32, device=device)
    total_bytes = torch.tensor(0, dtype=torch.int64, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        x, y = next(batch_iter)
        loss = model(x, y, loss_reduction="none").view(-1)
        y = y.view(-1)
        valid = y >= 0
        num_bytes = torch.where(valid, token_bytes[torch.where(valid, y, 0)], 0)
        total_nats += (loss.float() * (num_bytes > 0)).sum()
        total_bytes += num_bytes.sum()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    total_nats, total_bytes = total_nats.item(), total_bytes.item()
    return total_nats / (math.log(2) * total_bytes) if total_bytes > 0 else float("inf")
