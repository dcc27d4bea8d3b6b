"""
Supervised finetuning: one conversation per row, padded, loss only on the assistant's tokens.

    python -m scripts.chat_sft
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft -- --source=mid

CPU example (tiny model):
    python -m scripts.chat_sft --device_type=cpu --device_batch_size=2 --target_examples_per_step=4 \
        --num_iterations=30 --max_seq_len=512 --eval_every=10 --eval_steps=4 --eval_metrics_every=-1

Resume exactly from the checkpoint of step N (written with --save_every): --resume_from_step=N.
"""

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before torch touches CUDA

import torch

from nanochat.chat_data import PaddedConversations, nonempty_tasks
from nanochat.checkpoint_manager import load_model
from nanochat.common import (autodetect_device_type, compute_cleanup, compute_init, get_base_dir,
                             print0, print_banner, sum_across_ranks)
from nanochat.configurator import configure
from nanochat.engine import Engine
from nanochat.training import (apply_schedule, autocast_context, gather_loader_states, get_report,
                               init_wandb, is_due, linear_decay_lr_multiplier, load_training_checkpoint,
                               save_training_checkpoint, setup_optimizers)
from scripts.chat_eval import run_chat_eval
from tasks.common import TaskMixture

DEFAULTS = dict(
    run="dummy",  # wandb run name; "dummy" disables wandb
    source="mid",  # base|mid: which checkpoint family to finetune
    model_tag=None,
    step=None,
    device_type="",  # cuda|cpu|mps; "" = autodetect
    dtype="bfloat16",  # "float32" turns CUDA autocast off
    device_batch_size=4,
    num_epochs=1,
    num_iterations=-1,  # -1 = derive from num_epochs
    target_examples_per_step=32,
    unembedding_lr=0.004,
    embedding_lr=0.2,
    matrix_lr=0.02,
    weight_decay=0.0,
    init_lr_frac=0.02,
    eval_every=100,
    eval_steps=100,
    eval_metrics_every=200,  # MMLU / ARC-Easy accuracy; <= 0 disables
    eval_metrics_max_problems=1024,
    max_seq_len=2048,  # conversations are truncated to this many tokens
    save_every=-1,  # extra checkpoints for resuming; -1 = only at the end
    resume_from_step=-1,
)
SECTION = "Chat SFT"


def build_tasks():
    """(train tasks, val tasks) as (name, task) pairs."""
    from tasks.arc import ARC
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SimpleSpelling, SpellingBee
    identity = os.path.join(get_base_dir(), "identity_conversations.jsonl")
    train = [("ARC-Easy train", ARC("ARC-Easy", "train")), ("ARC-Challenge train", ARC("ARC-Challenge", "train")),
             ("GSM8K main/train", GSM8K("main", "train")), ("SmolTalk train[:10000]", SmolTalk("train", stop=10_000)),
             ("identity", CustomJSON(identity)), ("SimpleSpelling", SimpleSpelling(size=300, split="train")),
             ("SpellingBee", SpellingBee(size=300, split="train"))]
    return train, [("SmolTalk test", SmolTalk("test"))]


def main(argv=None):
    cfg = configure(DEFAULTS, argv)
    user_config = cfg.user_config()
    print_banner()
    device_type = cfg.device_type or autodetect_device_type()
    ddp, rank, _, world_size, device = compute_init(device_type)
    autocast_ctx = autocast_context(device_type, cfg.dtype)
    wandb_run = init_wandb(cfg.run, user_config, rank == 0, project="nanochat-sft")
    model, tokenizer, _ = load_model(cfg.source, device, phase="train", model_tag=cfg.model_tag, step=cfg.step)
    # not compiled: every batch has a different width
    engine = Engine(model, tokenizer)  # for the inline MMLU / ARC-Easy evals

    train_named, val_named = build_tasks()
    train_ds, val_ds = TaskMixture(nonempty_tasks(train_named, "train")), TaskMixture(nonempty_tasks(val_named, "val"))
    examples_per_pass = cfg.device_batch_size * world_size
    if cfg.target_examples_per_step % examples_per_pass != 0:
        raise ValueError(f"target_examples_per_step={cfg.target_examples_per_step} must be a multiple of "
                         f"device_batch_size*world_size = {cfg.device_batch_size}*{world_size} = {examples_per_pass}")
    accum_steps = cfg.target_examples_per_step // examples_per_pass
    num_iterations = (cfg.num_iterations if cfg.num_iterations > 0
                      else (len(train_ds) // cfg.target_examples_per_step) * cfg.num_epochs)
    if num_iterations <= 0:
        raise ValueError(f"{len(train_ds)} training rows give no full step of {cfg.target_examples_per_step} "
                         "examples; lower target_examples_per_step or set num_iterations")
    print0(f"Gradient accumulation steps: {accum_steps}, iterations: {num_iterations}")

    optimizers = setup_optimizers(model, cfg, init_lr_frac=cfg.init_lr_frac)

    checkpoint_dir = os.path.join(get_base_dir(), "chatsft_checkpoints", f"d{model.config.n_layer}")
    start_step, loader_state, metrics = 0, None, {"val_loss": None, "mmlu_acc": None, "arc_easy_acc": None}
    if cfg.resume_from_step >= 0:
        print0(f"Resuming from step {cfg.resume_from_step} of {checkpoint_dir}")
        meta = load_training_checkpoint(checkpoint_dir, cfg.resume_from_step, model, optimizers, device, rank)
        start_step, loader_state = meta["step"], meta["dataloader_state_dicts"][rank]
        metrics.update({k: meta[k] for k in metrics})

    def padded(dataset, state=None, name="sft"):
        return PaddedConversations(dataset, tokenizer, cfg.device_batch_size, rank=rank, world_size=world_size,
                                   device=device, max_tokens=cfg.max_seq_len, state=state, name=name)

    train_loader = padded(train_ds, loader_state, "sft train")
    report = get_report()
    train_loss = None
    for step in range(start_step, num_iterations + 1):
        last_step = step == num_iterations  # evaluate and save; no update

        if is_due(step, cfg.eval_every, last_step):
            model.eval()
            val_loader = padded(val_ds, name="sft val")
            loss_sum, num_tokens = 0.0, 0
            with torch.no_grad(), autocast_ctx:
                for _ in range(cfg.eval_steps):
                    x, y = next(val_loader)
                    loss_sum += model(x, y, loss_reduction="sum").item()
                    num_tokens += int((y >= 0).sum())
            loss_sum, num_tokens = sum_across_ranks([loss_sum, num_tokens], device)
            metrics["val_loss"] = loss_sum / max(num_tokens, 1)
            model.train()
            print0(f"Step {step:05d} | Validation loss: {metrics['val_loss']:.6f}")
            wandb_run.log({"step": step, "val_loss": metrics["val_loss"]})
            report.log_metrics(SECTION, step, val_loss=metrics["val_loss"])

        if is_due(step, cfg.eval_metrics_every, last_step, skip_first=True):
            model.eval()
            with autocast_ctx:
                for key, task in (("mmlu_acc", "MMLU"), ("arc_easy_acc", "ARC-Easy")):
                    metrics[key] = run_chat_eval(task, model, tokenizer, engine, batch_size=2 * cfg.device_batch_size,
                                                 max_problems=cfg.eval_metrics_max_problems)
            model.train()
            print0(f"Step {step:05d} | MMLU acc: {metrics['mmlu_acc']:.4f} | "
                   f"ARC-Easy acc: {metrics['arc_easy_acc']:.4f}")
            wandb_run.log({"step": step, "mmlu_acc": metrics["mmlu_acc"], "arc_easy_acc": metrics["arc_easy_acc"]})

        if last_step or (step != cfg.resume_from_step and is_due(step, cfg.save_every, skip_first=True)):
            meta = dict(metrics, step=step, model_config=model.config.__dict__, user_config=user_config,
                        dataloader_state_dicts=gather_loader_states(train_loader.state_dict()))
            save_training_checkpoint(checkpoint_dir, step, model, optimizers, meta, rank=rank)
        if last_step:
            break

        # The loss is the mean over the step's valid target tokens on every rank, not a mean of
        # per-micro-batch means: an all-masked micro-batch (long prompts) adds zero instead of NaN.
        batches = [next(train_loader) for _ in range(accum_steps)]
        num_tokens = sum_across_ranks([sum(int((y >= 0).sum()) for _, y in batches)], device)[0]
        # the optimizers average gradients over ranks, so each rank's share is scaled by world_size
        scale = world_size / max(num_tokens, 1)
        loss_sum = torch.zeros((), device=device)
        for x, y in batches:
            with autocast_ctx:
                loss = model(x, y, loss_reduction="sum")
            (loss * scale).backward()
            loss_sum += loss.detach().float()
        train_loss = sum_across_ranks([loss_sum.item()], device)[0] / max(num_tokens, 1)
        lrm = linear_decay_lr_multiplier(step, num_iterations)
        apply_schedule(optimizers, lrm)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

        print0(f"Step {step:05d}/{num_iterations:05d} | Training loss: {train_loss:.6f} | lrm: {lrm:.6f} "
               f"| num_tokens: {num_tokens:,}")
        wandb_run.log({"step": step, "lrm": lrm, "train_loss": train_loss, "num_tokens": num_tokens})
        report.log_metrics(SECTION, step, train_loss=train_loss, lrm=lrm)

    report.log(section=SECTION, data=[
        user_config,
        {"Training rows": len(train_ds), "Number of iterations": num_iterations, "Training loss": train_loss,
         "Validation loss": metrics["val_loss"], "Skipped conversations": train_loader.walker.skipped},
    ])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
