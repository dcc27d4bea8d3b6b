"""
On-policy REINFORCE for chat RL (a simplified GRPO): sample a group of completions for a prompt
(`sample_rollouts`, padded by chat_data's `collate_padded` like SFT's rows), score them, and push up the
log-probability of better-than-average samples: `group_advantages` is the reward minus the group mean
(no std normalisation, no KL, no clipping) and `policy_gradient_loss` a token-level normalised objective.
"""

import torch

from nanochat.chat_data import ASSISTANT_END, collate_padded


def group_advantages(rewards):
    """rewards (..., N) -> rewards minus their mean over the last dim (a group = one prompt's samples)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.numel() == 0:
        raise ValueError("cannot compute advantages of an empty group of rewards")
    return rewards - rewards.mean(dim=-1, keepdim=True)


@torch.no_grad()
def sample_rollouts(engine, tokenizer, prompt_ids, reward_fn, num_samples, device_batch_size,
                    max_new_tokens, temperature=1.0, top_k=None, seed_key=(0, 0)):
    """Sample `num_samples` completions of `prompt_ids` in batches of `device_batch_size`, score each with
    `reward_fn(completion_text)`; returns the padded `inputs`/`targets`, the `rewards`, their `advantages`
    and the raw `sequences`. Seeds derive from `seed_key` (e.g. (step, example_idx)) for reproducibility."""
    if num_samples % device_batch_size != 0:
        raise ValueError(f"num_samples={num_samples} must be a multiple of device_batch_size={device_batch_size}")
    was_training = engine.model.training
    engine.model.eval()
    sequences, masks = [], []
    for sampling_step in range(num_samples // device_batch_size):
        seed = hash((*seed_key, sampling_step)) & 0x7FFFFFFF
        batch, batch_masks = engine.generate_batch(prompt_ids, num_samples=device_batch_size,
                                                   max_tokens=max_new_tokens, temperature=temperature,
                                                   top_k=top_k, seed=seed)
        sequences.extend(batch)
        masks.extend(batch_masks)
    engine.model.train(was_training)
    rewards = torch.tensor([float(reward_fn(tokenizer.decode(seq[len(prompt_ids):]))) for seq in sequences])
    # the masks are 1 on sampled tokens: the prompt, calculator output and padding are not trained on
    pad_id = tokenizer.encode_special(ASSISTANT_END)
    inputs, targets = collate_padded(list(zip(sequences, masks, strict=True)), pad_id)
    return {"sequences": sequences, "inputs": inputs, "targets": targets,
            "rewards": rewards, "advantages": group_advantages(rewards)}


def policy_gradient_loss(model, inputs, targets, advantages, normalizer=1):
    """-sum(logp(sampled token) * advantage of its row) / (num_valid_tokens * normalizer); ignored targets (-1)
    contribute 0. `normalizer` = passes per example * examples per rank, so accumulated gradients average them."""
    logp = -model(inputs, targets, loss_reduction="none").view_as(inputs)
    num_valid = (targets >= 0).sum().clamp(min=1)
    return -(logp * advantages.to(logp.device)[:, None]).sum() / (num_valid * normalizer)
