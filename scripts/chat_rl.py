"""
Reinforcement learning on GSM8K: sample completions, reward correct final answers, and apply an
on-policy policy-gradient update (a simplified GRPO: no KL, no ratio clipping, mean baseline).

    python -m scripts.chat_rl
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --run=default

CPU example (tiny model, a few steps):
    python -m scripts.chat_rl --device_type=cpu --num_steps=4 --examples_per_step=2 --num_samples=4 \
        --device_batch_size=4 --max_new_tokens=32 --eval_every=2 --eval_examples=4
"""

import itertools
import os

from nanochat.checkpoint_manager import load_model
from nanochat.common import (autodetect_device_type, compute_cleanup, compute_init, get_base_dir, get_dist_info,
                             mean_across_ranks, print0, print_banner, sum_across_ranks)
from nanochat.configurator import configure
from nanochat.engine import Engine
from nanochat.policy_gradient import policy_gradient_loss, sample_rollouts
from nanochat.training import (apply_schedule, autocast_context, get_report, init_wandb, is_due,
                               linear_decay_lr_multiplier, save_training_checkpoint, setup_optimizers)

DEFAULTS = dict(
    run="dummy",  # wandb run name; "dummy" disables wandb
    source="sft",  # mid|sft
    model_tag=None,
    step=None,
    device_type="",  # cuda|cpu|mps; "" = autodetect
    dtype="bfloat16",  # "float32" turns CUDA autocast off
    device_batch_size=8,  # max rows per forward pass
    examples_per_step=16,  # questions per optimizer step, across all ranks
    num_samples=16,  # completions per question
    max_new_tokens=256,
    temperature=1.0,
    top_k=50,
    unembedding_lr=0.004,
    embedding_lr=0.2,
    matrix_lr=0.02,
    weight_decay=0.0,
    init_lr_frac=0.05,
    num_epochs=1,
    num_steps=-1,  # optimizer steps; -1 = one pass of num_epochs over the train split
    save_every=60,
    eval_every=60,
    eval_examples=400,
)
SECTION = "Chat RL"


def run_gsm8k_eval(task, tokenizer, engine, max_examples, num_samples, max_completion_tokens, temperature, top_k):
    """Yield {"idx", "outcomes": [{"is_correct"}, ...]} for this rank's share of the first max_examples."""
    _, rank, _, world_size = get_dist_info()
    for idx in range(rank, min(max_examples, len(task)), world_size):
        conversation = task[idx]
        prompt = tokenizer.render_for_completion(conversation)
        results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_completion_tokens,
                                           temperature=temperature, top_k=top_k)
        outcomes = [{"is_correct": bool(task.evaluate(conversation, tokenizer.decode(r[len(prompt):])))}
                    for r in results]
        yield {"idx": idx, "outcomes": outcomes}


def pass_at_k(records, k_max, device):
    """Fraction of examples with a correct answer among the first k samples, k = 1..k_max, over all ranks."""
    counts = [0] * (k_max + 1)  # last slot: number of examples
    for record in records:
        correct = [o["is_correct"] for o in record["outcomes"]]
        for k in range(1, k_max + 1):
            counts[k - 1] += any(correct[:k])
        counts[k_max] += 1
    counts = sum_across_ranks(counts, device)
    total = max(counts[k_max], 1)
    return {f"pass@{k}": counts[k - 1] / total for k in range(1, k_max + 1)}


def main(argv=None):
    cfg = configure(DEFAULTS, argv)
    user_config = cfg.user_config()
    print_banner()
    device_type = cfg.device_type or autodetect_device_type()
    ddp, rank, _, world_size, device = compute_init(device_type)
    autocast_ctx = autocast_context(device_type, cfg.dtype)
    wandb_run = init_wandb(cfg.run, user_config, rank == 0, project="nanochat-rl")
    model, tokenizer, _ = load_model(cfg.source, device, phase="eval", model_tag=cfg.model_tag, step=cfg.step)
    engine = Engine(model, tokenizer)
    from tasks.gsm8k import GSM8K
    train_task, val_task = GSM8K("main", "train"), GSM8K("main", "test")

    if cfg.examples_per_step % world_size != 0:
        raise ValueError(f"examples_per_step={cfg.examples_per_step} must be divisible by the {world_size} ranks")
    if cfg.num_samples % cfg.device_batch_size != 0:
        raise ValueError(f"num_samples={cfg.num_samples} must be a multiple of "
                         f"device_batch_size={cfg.device_batch_size}")
    examples_per_rank = cfg.examples_per_step // world_size
    passes = cfg.num_samples // cfg.device_batch_size
    num_steps = cfg.num_steps if cfg.num_steps > 0 else (len(train_task) // cfg.examples_per_step) * cfg.num_epochs
    if num_steps <= 0:
        raise ValueError(f"{len(train_task)} training examples make no step of {cfg.examples_per_step}; "
                         "lower examples_per_step or set num_steps")
    print0(f"Steps: {num_steps} | examples/rank/step: {examples_per_rank} | samples/example: {cfg.num_samples}")

    optimizers = setup_optimizers(model, cfg, init_lr_frac=cfg.init_lr_frac)

    checkpoint_dir = os.path.join(get_base_dir(), "chatrl_checkpoints", f"d{model.config.n_layer}")
    examples = itertools.cycle(range(rank, len(train_task), world_size))  # this rank's questions, forever
    report = get_report()
    for step in range(num_steps):
        if is_due(step, cfg.eval_every, step == num_steps - 1):
            model.eval()
            with autocast_ctx:
                records = run_gsm8k_eval(val_task, tokenizer, engine, max_examples=cfg.eval_examples,
                                         num_samples=cfg.device_batch_size, max_completion_tokens=cfg.max_new_tokens,
                                         temperature=1.0, top_k=cfg.top_k)
                passk = pass_at_k(records, cfg.device_batch_size, device)
            print0(f"Step {step} | " + ", ".join(f"{k}: {v:.4f}" for k, v in passk.items()))
            wandb_run.log({"step": step, **passk})

        model.train()
        rewards, lengths = [], []
        for _ in range(examples_per_rank):
            idx = next(examples)
            conversation = train_task[idx]
            with autocast_ctx:
                batch = sample_rollouts(engine, tokenizer, tokenizer.render_for_completion(conversation),
                                        lambda text: train_task.reward(conversation, text), cfg.num_samples,
                                        cfg.device_batch_size, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                        seed_key=(step, idx))
            rewards.append(batch["rewards"].mean().item())
            lengths.extend(len(s) for s in batch["sequences"])
            for start in range(0, cfg.num_samples, cfg.device_batch_size):
                rows = slice(start, start + cfg.device_batch_size)
                # Fully on-policy (one update per batch of fresh samples), so the ratio to the sampling
                # policy is 1: no importance ratio, no clipping, and no KL to a reference is needed.
                # The targets mask the prompt and the calculator's forced output tokens (the model did
                # not choose them); the normalizer averages over every pass of the step, like
                # dividing by the accumulation steps in pretraining.
                with autocast_ctx:
                    inputs, targets = batch["inputs"][rows].to(device), batch["targets"][rows].to(device)
                    loss = policy_gradient_loss(model, inputs, targets, batch["advantages"][rows],
                                                normalizer=passes * examples_per_rank)
                loss.backward()
        mean_reward, mean_length = mean_across_ranks([sum(rewards) / len(rewards), sum(lengths) / len(lengths)], device)
        lrm = linear_decay_lr_multiplier(step, num_steps)
        apply_schedule(optimizers, lrm)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        print0(f"Step {step}/{num_steps} | Average reward: {mean_reward:.4f} | "
               f"Average sequence length: {mean_length:.2f} | lrm: {lrm:.4f}")
        wandb_run.log({"step": step, "reward": mean_reward, "sequence_length": mean_length, "lrm": lrm})
        report.log_metrics(SECTION, step, reward=mean_reward, lrm=lrm)

        if (step > 0 and is_due(step, cfg.save_every)) or step == num_steps - 1:
            save_training_checkpoint(checkpoint_dir, step, model, None, {"model_config": model.config.__dict__},
                                     rank=rank)

    report.log(section=SECTION, data=[user_config])
    wandb_run.finish()
    compute_cleanup()


if __name__ == "__main__":
    main()
