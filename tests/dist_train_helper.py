"""
Run scripts.base_train (argv passed through) on a fixed synthetic token stream, for the
distributed-equivalence test in tests/test_base_train.py.

Global batch k is always the same tokens. With W ranks, rank r's i-th batch is k = i*W + r; one
process with gradient accumulation A reads k = 0, 1, 2, ... So every optimizer step of a W-rank run
with accumulation 1 sees the same batches as a 1-process run with accumulation W.
"""

import os
import sys

import torch

from nanochat import dataloader


def fixed_batches(B, T, split, tokenizer_threads=4, tokenizer_batch_size=128, device="cpu", resume_state_dict=None,
                  **_):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    offset = 0 if split == "train" else 1_000_000
    if resume_state_dict is not None:
        # each rank must get back its own position, not rank 0's
        assert resume_state_dict["rank"] == rank, f"rank {rank} resumed with rank {resume_state_dict['rank']}'s state"
    i = 0 if resume_state_dict is None else resume_state_dict["i"] + 1
    while True:
        g = torch.Generator().manual_seed(offset + i * world + rank)
        tokens = torch.randint(0, 256, (B * T + 1,), generator=g)
        yield tokens[:-1].view(B, T).to(device), tokens[1:].view(B, T).to(device), {"i": i, "rank": rank}
        i += 1


def fixed_batches_no_state(*args, **kwargs):
    for x, y, _ in fixed_batches(*args, **kwargs):
        yield x, y


if __name__ == "__main__":
    dataloader.tokenizing_distributed_data_loader_with_state = fixed_batches
    dataloader.tokenizing_distributed_data_loader = fixed_batches_no_state
    from scripts.base_train import main
    main(sys.argv[1:])
