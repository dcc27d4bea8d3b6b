"""
Midtraining: continue training the base model on packed conversations, so it learns the chat
special tokens, tool use, multiple choice, spelling and its own identity.

    python -m scripts.mid_train
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train -- --device_batch_size=16

CPU example (tiny model):
    python -m scripts.mid_train --device_type=cpu --max_seq_len=256 --device_batch_size=1 \
        --total_batch_size=256 --num_iterations=30 --eval_every=10 --eval_tokens=1024

Resume exactly from the checkpoint of step N (written with --save_every): --resume_from_step=N.
"""

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before torch touches CUDA

import time

from nanochat.chat_data import PackedConversations, nonempty_tasks
from nanochat.checkpoint_manager import load_model
from nanochat.common import (autodetect_device_type, compute_cleanup, compute_init, get_base_dir,
                             print0, print_banner)
from nanochat.configurator import configure
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import get_token_bytes
from nanochat.training import (LossTracker, any_rank, apply_schedule, autocast_context,
                               compile_model, format_log_line, gather_loader_states, get_report,
                               grad_accum_steps, init_wandb, is_due, load_training_checkpoint, mfu_percent,
                               mid_lr_multiplier, muon_momentum, save_training_checkpoint, setup_optimizers,
                               synchronize)
from tasks.common import TaskMixture

DEFAULTS = dict(
    run="dummy",  # wandb run name; "dummy" disables wandb
    device_type="",  # cuda|cpu|mps; "" = autodetect
    model_tag=None,  # base model tag to load (default: the largest)
    step=None,  # base model step to load (default: the last)
    dtype="bfloat16",  # "float32" turns CUDA autocast off
    num_iterations=-1,  # optimizer steps; -1 = one pass over the train mixture
    max_seq_len=2048,
    device_batch_size=32,
    unembedding_lr=0.004,
    embedding_lr=0.2,
    matrix_lr=0.02,
    init_lr_frac=1.0,
    weight_decay=0.0,
    eval_every=150,  # val bpb cadence; <= 0 disables
    eval_tokens=20 * 524288,
    total_batch_size=524288,
    dry_run=0,  # 1 = no checkpoint, no report
    save_every=-1,  # extra checkpoints for resuming; -1 = only at the end
    resume_from_step=-1,
    compile=None,  # torch.compile: None = on CUDA only
)
SECTION = "Midtraining"


def build_tasks():
    """(train mixture, val mixture). The MMLU auxiliary_train split falls back to dev when unavailable."""
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SimpleSpelling, SpellingBee
    identity = os.path.join(get_base_dir(), "identity_conversations.jsonl")
    if MMLU.is_available("auxiliary_train", "train"):
        mmlu = ("MMLU auxiliary_train", MMLU(subset="auxiliary_train", split="train"))
    else:
        print0("MMLU auxiliary_train is not available here (offline data pack): training on MMLU all/dev instead")
        mmlu = ("MMLU all/dev (fallback)", MMLU(subset="all", split="dev"))
    train = [("SmolTalk train", SmolTalk(split="train")), mmlu, ("GSM8K main/train", GSM8K("main", "train")),
             ("identity", CustomJSON(identity)), ("identity (2nd epoch)", CustomJSON(identity)),
             ("SimpleSpelling", SimpleSpelling(size=200000, split="train")),
             ("SpellingBee", SpellingBee(size=80000, split="train"))]
    val = [("SmolTalk test", SmolTalk(split="test")), ("MMLU all/test", MMLU("all", "test", stop=5200)),
           ("GSM8K main/test", GSM8K("main", "test", stop=420))]
    return train, val


def main(argv=None):
    cfg = configure(DEFAULTS, argv)
    user_config = cfg.user_config()
    print_banner()
    device_type = cfg.device_type or autodetect_device_type()
    ddp, rank, _, world_size, device = compute_init(device_type)
    master_process = rank == 0
    autocast_ctx = autocast_context(device_type, cfg.dtype)
    wandb_run = init_wandb(cfg.run, user_config, master_process, project="nanochat-mid")

    orig_model, tokenizer, base_meta = load_model("base", device, phase="train", model_tag=cfg.model_tag,
                                                  step=cfg.step)
    if cfg.device_batch_size > base_meta.get("device_batch_size", cfg.device_batch_size):
        print0(f"FOOTGUN WARNING: device_batch_size={cfg.device_batch_size} is larger than the base run's "
               f"{base_meta['device_batch_size']}; lower it if you run out of memory")
    model_config = dict(orig_model.config.__dict__, sequence_len=cfg.max_seq_len)
    model = compile_model(orig_model, device_type, cfg.compile)
    flops_per_token = orig_model.estimate_flops()
    accum_steps = grad_accum_steps(cfg.total_batch_size, cfg.device_batch_size, cfg.max_seq_len, world_size)
    print0(f"Total batch size {cfg.total_batch_size:,} => gradient accumulation steps: {accum_steps}")
    token_bytes = get_token_bytes(device=device)
    optimizers = setup_optimizers(orig_model, cfg, init_lr_frac=cfg.init_lr_frac)

    train_named, val_named = build_tasks()
    train_ds, val_ds = TaskMixture(nonempty_tasks(train_named, "train")), TaskMixture(nonempty_tasks(val_named, "val"))

    # resume: model, optimizer shards, RNG, every rank's data position, loop state
    checkpoint_dir = os.path.join(get_base_dir(), "mid_checkpoints", f"d{orig_model.config.n_layer}")
    step, loader_state, val_bpb, min_val_bpb, total_time = 0, None, None, float("inf"), 0.0
    loss_tracker = LossTracker()
    if cfg.resume_from_step >= 0:
        print0(f"Resuming from step {cfg.resume_from_step} of {checkpoint_dir}")
        meta = load_training_checkpoint(checkpoint_dir, cfg.resume_from_step, orig_model, optimizers, device, rank)
        states = meta["dataloader_state_dicts"]
        step, loader_state, val_bpb = meta["step"], states[rank], meta["val_bpb"]
        min_val_bpb, loss_tracker.ema, total_time = (meta["loop_state"][k] for k in
                                                     ("min_val_bpb", "smooth_train_loss", "total_training_time"))

    def packed(dataset, **kwargs):
        return PackedConversations(dataset, tokenizer, cfg.device_batch_size, cfg.max_seq_len, rank=rank,
                                   world_size=world_size, device=device, **kwargs)

    train_loader = packed(train_ds, state=loader_state, name="mid train")
    pending_state = train_loader.state_dict()  # position of the batch about to be fetched
    x, y = next(train_loader)
    eval_steps = max(1, cfg.eval_tokens // (cfg.device_batch_size * cfg.max_seq_len * world_size))
    report = get_report()
    while True:
        done = train_loader.last_step or (cfg.num_iterations > 0 and step >= cfg.num_iterations)
        last_step = any_rank(done, device)  # all ranks stop together
        progress = step / cfg.num_iterations if cfg.num_iterations > 0 else train_loader.progress

        if is_due(step, cfg.eval_every, last_step):
            model.eval()
            with autocast_ctx:
                val_bpb = evaluate_bpb(model, packed(val_ds, stop_at_epoch_end=False, name="mid val"),
                                       eval_steps, token_bytes)
            model.train()
            min_val_bpb = min(min_val_bpb, val_bpb)
            print0(f"Step {step:05d} | Validation bpb: {val_bpb:.4f}")
            wandb_run.log({"step": step, "val/bpb": val_bpb})
            report.log_metrics(SECTION, step, val_bpb=val_bpb)

        periodic_save = step != cfg.resume_from_step and is_due(step, cfg.save_every, skip_first=True)
        if not cfg.dry_run and (last_step or periodic_save):
            meta = {"step": step, "val_bpb": val_bpb, "model_config": model_config, "user_config": user_config,
                    "device_batch_size": cfg.device_batch_size, "max_seq_len": cfg.max_seq_len,
                    "dataloader_state_dicts": gather_loader_states(pending_state),
                    "loop_state": {"min_val_bpb": min_val_bpb, "smooth_train_loss": loss_tracker.ema,
                                   "total_training_time": total_time}}
            save_training_checkpoint(checkpoint_dir, step, orig_model, optimizers, meta, rank=rank)
        if last_step:
            break

        synchronize(device_type)
        t0 = time.time()
        for _ in range(accum_steps):
            with autocast_ctx:
                loss = model(x, y)
            train_loss = loss.detach()
            (loss / accum_steps).backward()
            pending_state = train_loader.state_dict()
            x, y = next(train_loader)  # prefetch
        if cfg.num_iterations <= 0:
            progress = train_loader.progress
        lrm = mid_lr_multiplier(progress)
        apply_schedule(optimizers, lrm, momentum=muon_momentum(step))
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        synchronize(device_type)
        dt = time.time() - t0

        smooth_loss = loss_tracker.update(train_loss.item(), step)
        step += 1
        if step > 10:
            total_time += dt
        mfu = mfu_percent(flops_per_token, cfg.total_batch_size / dt, world_size, device_type)
        horizon = cfg.num_iterations if cfg.num_iterations > 0 else round(step / max(progress, 1e-9))
        print0(format_log_line(step, horizon, smooth_loss, dt, cfg.total_batch_size, lrm=lrm, mfu=mfu,
                               total_time=total_time))
        report.log_metrics(SECTION, step, train_loss=smooth_loss, lrm=lrm)
        if step % 10 == 0:
            wandb_run.log({"step": step, "train/loss": smooth_loss, "train/lrm": lrm, "train/dt": dt,
                           "train/mfu": mfu or 0.0})

    print0(f"Minimum validation bpb: {min_val_bpb:.4f}")
    skipped = train_loader.walker.skipped
    if skipped:
        print0(f"Skipped {skipped} malformed training conversations")
    if not cfg.dry_run:
        report.log(section=SECTION, data=[
            user_config,
            {"Number of iterations": step, "DDP world size": world_size, "Skipped conversations": skipped},
            {"Minimum validation bpb": min_val_bpb if val_bpb is not None else None},
        ])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
