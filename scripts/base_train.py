"""
Pretrain the base model from scratch, or resume it exactly from a checkpoint.

    python -m scripts.base_train --depth=20
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=20

CPU example (a tiny model, a few minutes):
    python -m scripts.base_train --depth=4 --max_seq_len=512 --device_batch_size=1 --eval_tokens=512 \
        --core_metric_every=-1 --total_batch_size=512 --num_iterations=20

Resume from the checkpoint of step N (same settings): --resume_from_step=N. Model, every rank's
optimizer shard, data position, schedules and RNG are restored; on CPU the continued run is
bit-identical to an uninterrupted one.
"""

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before torch touches CUDA

import time

import torch

from nanochat import dataloader
from nanochat.common import (autodetect_device_type, compute_cleanup, compute_init, get_base_dir,
                             print0, print_banner)
from nanochat.configurator import configure
from nanochat.gpt import GPT, config_for_depth
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.training import (LossTracker, apply_schedule, autocast_context, base_lr_multiplier,
                               compile_model, format_log_line, gather_loader_states, get_report,
                               grad_accum_steps, init_wandb, is_due, load_training_checkpoint, mfu_percent,
                               muon_momentum, num_params, peak_memory_mib, sample_completions,
                               save_training_checkpoint, setup_optimizers, synchronize,
                               training_horizon)

DEFAULTS = dict(
    run="dummy",  # wandb run name; "dummy" disables wandb
    device_type="",  # cuda|cpu|mps; "" = autodetect
    # model
    depth=20,  # width, heads etc. follow from it
    max_seq_len=2048,
    # horizon: the first of these that is > 0 wins
    num_iterations=-1,
    target_flops=-1.0,
    target_param_data_ratio=20,  # Chinchilla
    # optimization
    device_batch_size=32,
    total_batch_size=524288,  # tokens per optimizer step
    embedding_lr=0.2,
    unembedding_lr=0.004,
    weight_decay=0.0,
    matrix_lr=0.02,
    grad_clip=1.0,  # 0.0 disables
    warmup_ratio=0.0,
    warmdown_ratio=0.2,
    final_lr_frac=0.0,
    resume_from_step=-1,
    # evaluation, sampling, checkpoints
    eval_every=250,
    eval_tokens=20 * 524288,
    core_metric_every=2000,  # -1 disables
    core_metric_max_per_task=500,
    sample_every=2000,
    save_every=-1,  # -1 = only at the end
    model_tag="",  # checkpoint dir name; default d<depth>
    compile=None,  # torch.compile the model: None = on CUDA only, True/False to force
)
SECTION = "Base model training"


def build_model(cfg, vocab_size, device, device_type):
    """(model config, the uncompiled model, the model to train). Allocated on the meta device first, so
    the parameters are materialised once, on the real device."""
    model_config = config_for_depth(cfg.depth, cfg.max_seq_len, vocab_size)
    print0(f"num_layers: {model_config.n_layer}, model_dim: {model_config.n_embd}, "
           f"num_heads: {model_config.n_head}, num_kv_heads: {model_config.n_kv_head}")
    with torch.device("meta"):
        model = GPT(model_config)
    model.to_empty(device=device)
    model.init_weights()
    return model_config, model, compile_model(model, device_type, cfg.compile)


def plan_horizon(cfg, n_params, flops_per_token):
    """Number of optimizer steps, from num_iterations, target_flops or the tokens:params ratio."""
    num_iterations = training_horizon(cfg.num_iterations, cfg.target_flops, cfg.target_param_data_ratio,
                                      n_params, flops_per_token, cfg.total_batch_size)
    total_tokens = cfg.total_batch_size * num_iterations
    print0(f"Number of iterations: {num_iterations:,}")
    print0(f"Total number of training tokens: {total_tokens:,}")
    print0(f"Tokens : Params ratio: {total_tokens / n_params:.2f}")
    print0(f"Total training FLOPs estimate: {flops_per_token * total_tokens:e}")
    return num_iterations


def resume(cfg, checkpoint_dir, model_config, model, optimizers, loss_tracker, device, rank, world_size):
    """Restore model, this rank's optimizer shards and RNG from checkpoint cfg.resume_from_step;
    returns (step, this rank's loader position, val_bpb, min_val_bpb, total training time)."""
    print0(f"Resuming from step {cfg.resume_from_step} of {checkpoint_dir}")
    meta = load_training_checkpoint(checkpoint_dir, cfg.resume_from_step, model, optimizers, device, rank)
    if meta["model_config"] != model_config.__dict__:
        raise ValueError(f"checkpoint model config {meta['model_config']} does not match this run's "
                         f"{model_config.__dict__}; resume with the same depth/max_seq_len/tokenizer")
    # every rank resumes its own loader position (the original's checkpoints hold rank 0's only)
    rank_states = meta.get("dataloader_state_dicts")
    own_states = rank_states and len(rank_states) == world_size
    loader_state = rank_states[rank] if own_states else meta["dataloader_state_dict"]
    loop_state = meta["loop_state"]
    loss_tracker.ema = loop_state["smooth_train_loss"]
    return (meta["step"], loader_state, meta.get("val_bpb"), loop_state["min_val_bpb"],
            loop_state["total_training_time"])


def checkpoint_meta(cfg, step, val_bpb, model_config, user_config, rank_states, loop_state):
    return {
        "step": step,
        "val_bpb": val_bpb,
        "model_config": model_config.__dict__,
        "user_config": user_config,
        "device_batch_size": cfg.device_batch_size,
        "max_seq_len": cfg.max_seq_len,
        "dataloader_state_dict": rank_states[0],  # the original's key (rank 0), so its tools can resume
        "dataloader_state_dicts": rank_states,
        "loop_state": loop_state,
    }


def write_report(report, cfg, user_config, n_params, flops_per_token, num_iterations, world_size, summary):
    total_tokens = cfg.total_batch_size * num_iterations
    report.log(section=SECTION, data=[
        user_config,
        {
            "Number of parameters": n_params,
            "Number of FLOPs per token": f"{flops_per_token:e}",
            "Calculated number of iterations": num_iterations,
            "Number of training tokens": total_tokens,
            "Tokens : Params ratio": total_tokens / n_params,
            "DDP world size": world_size,
            "warmup_ratio": cfg.warmup_ratio,
            "warmdown_ratio": cfg.warmdown_ratio,
            "final_lr_frac": cfg.final_lr_frac,
        },
        summary,
    ])


def main(argv=None):
    cfg = configure(DEFAULTS, argv)
    user_config = cfg.user_config()
    print_banner()

    # compute, tokenizer, wandb
    device_type = cfg.device_type or autodetect_device_type()
    ddp, rank, local_rank, world_size, device = compute_init(device_type)
    master_process = rank == 0
    autocast_ctx = autocast_context(device_type)
    wandb_run = init_wandb(cfg.run, user_config, master_process)
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(device=device)
    vocab_size = tokenizer.get_vocab_size()
    print0(f"Vocab size: {vocab_size:,}")

    tokens_per_fwdbwd = cfg.device_batch_size * cfg.max_seq_len
    accum_steps = grad_accum_steps(cfg.total_batch_size, cfg.device_batch_size, cfg.max_seq_len, world_size)
    print0(f"Tokens / micro-batch / rank: {cfg.device_batch_size} x {cfg.max_seq_len} = {tokens_per_fwdbwd:,}")
    print0(f"Total batch size {cfg.total_batch_size:,} => gradient accumulation steps: {accum_steps}")
    # orig_model is what gets saved, evaluated and sampled: the compiled one is specialised to the
    # training shapes and would recompile for every other batch shape
    model_config, orig_model, model = build_model(cfg, vocab_size, device, device_type)
    n_params = num_params(orig_model)
    flops_per_token = orig_model.estimate_flops()
    print0(f"Number of parameters: {n_params:,}")
    print0(f"Estimated FLOPs per token: {flops_per_token:e}")
    num_iterations = plan_horizon(cfg, n_params, flops_per_token)
    optimizers = setup_optimizers(orig_model, cfg)

    checkpoint_dir = os.path.join(get_base_dir(), "base_checkpoints", cfg.model_tag or f"d{cfg.depth}")
    start_step, loader_state, val_bpb, min_val_bpb, total_training_time = 0, None, None, float("inf"), 0.0
    loss_tracker = LossTracker()
    if cfg.resume_from_step >= 0:
        start_step, loader_state, val_bpb, min_val_bpb, total_training_time = resume(
            cfg, checkpoint_dir, model_config, orig_model, optimizers, loss_tracker, device, rank, world_size)

    # data: the train stream resumes where the checkpoint left it; val restarts at every evaluation
    train_loader = dataloader.tokenizing_distributed_data_loader_with_state(
        cfg.device_batch_size, cfg.max_seq_len, split="train", device=device, resume_state_dict=loader_state)
    x, y, next_state = next(train_loader)  # prefetch
    eval_steps = max(1, cfg.eval_tokens // (tokens_per_fwdbwd * world_size))

    report = get_report()
    core_metric = None
    for step in range(start_step, num_iterations + 1):
        last_step = step == num_iterations
        flops_so_far = flops_per_token * cfg.total_batch_size * step

        if last_step or is_due(step, cfg.eval_every):
            model.eval()
            val_loader = dataloader.tokenizing_distributed_data_loader(
                cfg.device_batch_size, cfg.max_seq_len, split="val", device=device)
            with autocast_ctx:
                val_bpb = evaluate_bpb(model, val_loader, eval_steps, token_bytes)
            model.train()
            min_val_bpb = min(min_val_bpb, val_bpb)
            print0(f"Step {step:05d} | Validation bpb: {val_bpb:.4f}")
            wandb_run.log({"step": step, "total_training_flops": flops_so_far,
                           "total_training_time": total_training_time, "val/bpb": val_bpb})
            report.log_metrics(SECTION, step, val_bpb=val_bpb)

        if is_due(step, cfg.core_metric_every, last_step, skip_first=True):
            from scripts.base_eval import evaluate_model
            orig_model.eval()
            with autocast_ctx:
                core_results = evaluate_model(orig_model, tokenizer, device,
                                              max_per_task=cfg.core_metric_max_per_task)
            orig_model.train()
            core_metric = core_results["core_metric"]
            print0(f"Step {step:05d} | CORE metric: {core_metric:.4f}")
            wandb_run.log({"step": step, "total_training_flops": flops_so_far, "core_metric": core_metric,
                           "centered_results": core_results["centered_results"]})
            report.log_metrics(SECTION, step, core_metric=core_metric)

        if master_process and is_due(step, cfg.sample_every, last_step, skip_first=True):
            orig_model.eval()
            with autocast_ctx:
                for sample in sample_completions(orig_model, tokenizer):
                    print0(sample)
            orig_model.train()

        if last_step or (step != cfg.resume_from_step and is_due(step, cfg.save_every, skip_first=True)):
            rank_states = gather_loader_states(loader_state)  # collective: every rank takes part
            loop_state = {"min_val_bpb": min_val_bpb, "smooth_train_loss": loss_tracker.ema,
                          "total_training_time": total_training_time}
            meta = checkpoint_meta(cfg, step, val_bpb, model_config, user_config, rank_states, loop_state)
            save_training_checkpoint(checkpoint_dir, step, orig_model, optimizers, meta, rank=rank)

        if last_step:
            break

        # one optimizer step over accum_steps micro-batches. backward() adds gradients up, so each
        # micro-batch's mean loss is divided by accum_steps: the step then follows the mean over the
        # whole batch, the same gradient as one big batch of total_batch_size tokens
        synchronize(device_type)
        t0 = time.time()
        for _ in range(accum_steps):
            with autocast_ctx:
                loss = model(x, y)
            train_loss = loss.detach()
            (loss / accum_steps).backward()
            loader_state = next_state  # this batch is consumed: resuming continues after it
            x, y, next_state = next(train_loader)  # prefetch while the GPU works
        grad_norm = None
        if cfg.grad_clip > 0.0:
            grad_norm = torch.nn.utils.clip_grad_norm_(orig_model.parameters(), cfg.grad_clip).item()
        lrm = base_lr_multiplier(step, num_iterations, cfg.warmup_ratio, cfg.warmdown_ratio, cfg.final_lr_frac)
        apply_schedule(optimizers, lrm, momentum=muon_momentum(step))
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        synchronize(device_type)
        dt = time.time() - t0

        smooth_loss = loss_tracker.update(train_loss.item(), step)
        tok_per_sec = cfg.total_batch_size / dt
        mfu = mfu_percent(flops_per_token, tok_per_sec, world_size, device_type)
        if step > 10:
            total_training_time += dt  # the first steps include compilation and warm-up
        print0(format_log_line(step, num_iterations, smooth_loss, dt, cfg.total_batch_size, lrm=lrm,
                               grad_norm=grad_norm, mfu=mfu, total_time=total_training_time))
        report.log_metrics(SECTION, step, train_loss=smooth_loss, lrm=lrm)
        if step % 100 == 0:
            grad_log = {} if grad_norm is None else {"train/grad_norm": grad_norm}
            wandb_run.log({"step": step, "total_training_flops": flops_so_far,
                           "total_training_time": total_training_time, "train/loss": smooth_loss, "train/lrm": lrm,
                           "train/dt": dt, "train/tok_per_sec": tok_per_sec, "train/mfu": mfu or 0.0, **grad_log})

    peak_mib = peak_memory_mib(device_type)
    print0(f"Peak memory usage: {peak_mib:.2f}MiB")
    print0(f"Total training time: {total_training_time / 60:.2f}m")
    print0(f"Minimum validation bpb: {min_val_bpb:.4f}")
    final_mfu = mfu_percent(flops_per_token, cfg.total_batch_size / dt, world_size, device_type) \
        if num_iterations > start_step else None
    write_report(report, cfg, user_config, n_params, flops_per_token, num_iterations, world_size, {
        "Minimum validation bpb": min_val_bpb,
        "Final validation bpb": val_bpb,
        "CORE metric estimate": core_metric,
        "MFU %": f"{final_mfu:.2f}%" if final_mfu is not None else "n/a",
        "Total training flops": f"{flops_per_token * cfg.total_batch_size * num_iterations:e}",
        "Total training time": f"{total_training_time / 60:.2f}m",
        "Peak memory usage": f"{peak_mib:.2f}MiB",
    })
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
