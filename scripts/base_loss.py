"""
Bits per byte of a base checkpoint on larger samples of the train and val splits, plus a few
greedy samples.

    python -m scripts.base_loss
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss -- --split_tokens=10485760
"""

import os

import torch

from nanochat import dataloader
from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0
from nanochat.configurator import configure
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import get_token_bytes
from nanochat.training import autocast_context, get_report, sample_completions

DEFAULTS = dict(
    device_batch_size=32,
    split_tokens=20 * 524288,  # tokens evaluated per split
    model_tag=None,  # default: the largest d<N> under base_checkpoints
    model_step=None,  # default: the newest complete checkpoint
    device_type="",  # cuda|cpu|mps; "" = autodetect
)


def main(argv=None):
    cfg = configure(DEFAULTS, argv)
    device_type = cfg.device_type or autodetect_device_type()
    ddp, rank, local_rank, world_size, device = compute_init(device_type)
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=cfg.model_tag, step=cfg.model_step)
    sequence_len = meta["model_config"]["sequence_len"]
    autocast_ctx = autocast_context(device_type)

    tokens_per_step = cfg.device_batch_size * sequence_len * world_size
    if cfg.split_tokens % tokens_per_step != 0:
        raise ValueError(f"split_tokens={cfg.split_tokens} is not divisible by device_batch_size*sequence_len*"
                         f"world_size = {cfg.device_batch_size}*{sequence_len}*{world_size} = {tokens_per_step}")
    steps = cfg.split_tokens // tokens_per_step
    token_bytes = get_token_bytes(device=device)
    bpb_results = {}
    for split in ("train", "val"):
        loader = dataloader.tokenizing_distributed_data_loader(cfg.device_batch_size, sequence_len, split,
                                                               device=device)
        with autocast_ctx:
            bpb_results[split] = evaluate_bpb(model, loader, steps, token_bytes)
        print0(f"{split} bpb: {bpb_results[split]:.4f}")

    samples = []
    if rank == 0:
        with autocast_ctx, torch.no_grad():
            samples = sample_completions(model, tokenizer)
        for sample in samples:
            print0(sample)

    get_report().log(section="Base model loss", data=[
        {"train bpb": bpb_results["train"], "val bpb": bpb_results["val"]},
        {f"sample {i}": sample for i, sample in enumerate(samples)},
    ])
    compute_cleanup()
    return {"bpb": bpb_results, "samples": samples}


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    main()
