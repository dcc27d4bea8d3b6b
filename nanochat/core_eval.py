"""
CORE in-context evaluation (DCLM, arXiv 2406.11794): few-shot prompts, scored by the base model's
losses/greedy predictions on the answer span. Three item types:
- multiple_choice:   {"query", "choices": [...], "gold": int}      -> lowest mean loss over each choice
- schema:            {"context_options": [...], "continuation", "gold"} -> lowest loss of the shared continuation
- language_modeling: {"context", "continuation"}                   -> every continuation token predicted greedily
"""

import random

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import sum_across_ranks

REQUIRED_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}


class MalformedItem(ValueError):
    """A task row that cannot be rendered for its task type."""


def check_item(item, task_type):
    """Raise MalformedItem unless `item` has the fields and types its task type needs."""
    if task_type not in REQUIRED_FIELDS:
        raise ValueError(f"unknown CORE task type {task_type!r}; expected one of {sorted(REQUIRED_FIELDS)}")
    if not isinstance(item, dict):
        raise MalformedItem(f"item is a {type(item).__name__}, not an object")
    missing = [k for k in REQUIRED_FIELDS[task_type] if k not in item]
    if missing:
        raise MalformedItem(f"missing field(s) {missing}")
    if task_type != "language_modeling":
        options = item["choices"] if task_type == "multiple_choice" else item["context_options"]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise MalformedItem("needs a list of at least two string options")
        if not isinstance(item["gold"], int) or not 0 <= item["gold"] < len(options):
            raise MalformedItem(f"gold={item['gold']!r} is not an index into {len(options)} options")
    for field in REQUIRED_FIELDS[task_type]:
        if field in ("query", "continuation", "context") and not isinstance(item[field], str):
            raise MalformedItem(f"field {field!r} must be a string")


def split_malformed(data, task_type):
    """(usable items, number of malformed ones) — bad rows are counted, never fatal."""
    good, bad = [], 0
    for item in data:
        try:
            check_item(item, task_type)
            good.append(item)
        except MalformedItem:
            bad += 1
    return good, bad


# -----------------------------------------------------------------------------
# Prompt rendering (shots separated by a blank line)

def render_prompts_mc(item, continuation_delimiter, fewshot_examples=None):
    """One prompt per choice; the choices share the prefix, so the answer span is the differing tail."""
    shots = "".join(f"{ex['query']}{continuation_delimiter}{ex['choices'][ex['gold']]}\n\n"
                    for ex in (fewshot_examples or []))
    return [f"{shots}{item['query']}{continuation_delimiter}{choice}" for choice in item["choices"]]


def render_prompts_schema(item, continuation_delimiter, fewshot_examples=None):
    """One prompt per context option; all end with the same continuation (the scored span)."""
    shots = "".join(f"{ex['context_options'][ex['gold']]}{continuation_delimiter}{ex['continuation']}\n\n"
                    for ex in (fewshot_examples or []))
    return [f"{shots}{option}{continuation_delimiter}{item['continuation']}" for option in item["context_options"]]


def render_prompts_lm(item, continuation_delimiter, fewshot_examples=None):
    """[without, with] the continuation; `without` is stripped so its tokens prefix those of `with`."""
    shots = "".join(f"{ex['context'].strip()}{continuation_delimiter}{ex['continuation']}\n\n"
                    for ex in (fewshot_examples or []))
    prompt = f"{shots}{item['context'].strip()}{continuation_delimiter}"
    return [prompt.strip(), prompt + item["continuation"]]


# -----------------------------------------------------------------------------
# Batching

def find_common_length(token_sequences, direction="left"):
    """Length of the common prefix ('left') or suffix ('right') of all sequences."""
    min_len = min(len(seq) for seq in token_sequences)
    indices = range(min_len) if direction == "left" else range(-1, -min_len - 1, -1)
    for i, idx in enumerate(indices):
        token = token_sequences[0][idx]
        if not all(seq[idx] == token for seq in token_sequences):
            return i
    return min_len


def stack_sequences(tokens, pad_token_id):
    """Right-pad a list of token lists into a (B, max_len) LongTensor."""
    rows = [torch.tensor(row, dtype=torch.long) for row in tokens]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_token_id)


def batch_sequences_mc(tokenizer, prompts):
    tokens = tokenizer(prompts, prepend=tokenizer.get_bos_token_id())
    answer_start = find_common_length(tokens, direction="left")
    return tokens, [answer_start] * len(prompts), [len(row) for row in tokens]


def batch_sequences_schema(tokenizer, prompts):
    tokens = tokenizer(prompts, prepend=tokenizer.get_bos_token_id())
    suffix_length = find_common_length(tokens, direction="right")
    end_indices = [len(row) for row in tokens]
    return tokens, [end - suffix_length for end in end_indices], end_indices


def batch_sequences_lm(tokenizer, prompts):
    tokens_without, tokens_with = tokenizer(prompts, prepend=tokenizer.get_bos_token_id())
    start, end = len(tokens_without), len(tokens_with)
    if not (start < end and tokens_with[:start] == tokens_without):
        raise MalformedItem("the prompt without the continuation does not tokenize to a strict prefix "
                            "of the prompt with it")
    return [tokens_with], [start], [end]


PROMPT_BUILDERS = {
    "multiple_choice": (render_prompts_mc, batch_sequences_mc),
    "schema": (render_prompts_schema, batch_sequences_schema),
    "language_modeling": (render_prompts_lm, batch_sequences_lm),
}


# -----------------------------------------------------------------------------
# Scoring

@torch.no_grad()
def forward_model(model, input_ids):
    """Per-position next-token losses (last column NaN) and greedy predictions, both (B, T)."""
    logits = model(input_ids)
    target_ids = torch.roll(input_ids, shifts=-1, dims=1)
    losses = F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(), reduction="none").view_as(input_ids)
    losses[:, -1] = float("nan")
    return losses, logits.argmax(dim=-1)


def _crop_to_context(tokens, start_idxs, end_idxs, max_seq_len):
    """Keep the last max_seq_len tokens of each row, shifting the spans to match."""
    crops = [max(0, len(row) - max_seq_len) for row in tokens]
    return ([row[-max_seq_len:] for row in tokens],
            [max(0, start - crop) for start, crop in zip(start_idxs, crops)],
            [end - crop for end, crop in zip(end_idxs, crops)])


@torch.no_grad()
def evaluate_example(idx, model, tokenizer, data, device, task_meta):
    """Whether the model gets item `idx` right under this task's few-shot setup."""
    item = data[idx]
    task_type, delimiter = task_meta["task_type"], task_meta["continuation_delimiter"]
    if task_type not in PROMPT_BUILDERS:
        raise ValueError(f"Unsupported task type: {task_type}")
    # the reference's draw of k other items, seeded per example: sampling positions of range(n - 1) picks what
    # sampling the list of the other indices picks, without building that list for every example
    rng = random.Random(1234 + idx)
    k = min(task_meta["num_fewshot"], len(data) - 1)
    fewshot_examples = [data[j + (j >= idx)] for j in rng.sample(range(len(data) - 1), k)]
    render_prompts, batch_sequences = PROMPT_BUILDERS[task_type]
    tokens, start_idxs, end_idxs = batch_sequences(tokenizer, render_prompts(item, delimiter, fewshot_examples))

    # the HF wrapper declares its context; our GPT cannot encode positions past its rotary tables
    max_seq_len = getattr(model, "max_seq_len", None) or getattr(model, "rotary_seq_len", None)
    if max_seq_len is not None:
        tokens, start_idxs, end_idxs = _crop_to_context(tokens, start_idxs, end_idxs, max_seq_len)

    input_ids = stack_sequences(tokens, tokenizer.get_bos_token_id()).to(device)
    losses, predictions = forward_model(model, input_ids)

    if task_type == "language_modeling":
        si, ei = start_idxs[0], end_idxs[0]
        return bool(torch.all(predictions[0, si - 1:ei - 1] == input_ids[0, si:ei]).item())
    # an empty span (identical options) would average to NaN; treat it as infinitely unlikely
    mean_losses = [losses[i, si - 1:ei - 1].mean().item() if ei > si else float("inf")
                   for i, (si, ei) in enumerate(zip(start_idxs, end_idxs))]
    return min(range(len(mean_losses)), key=mean_losses.__getitem__) == item["gold"]


def evaluate_task(model, tokenizer, data, device, task_meta, stats=None, max_examples=None):
    """Accuracy over `data` (its first `max_examples` items when given), examples strided over ranks and summed
    across them. Few-shot examples come from the first max(max_examples, num_fewshot + 1) items, so a crop below
    the shot count still gets every shot (the original crashed there). An example that fails to render is
    counted in stats["malformed"] and left out of the mean, not fatal."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    num_examples = len(data) if max_examples is None else min(len(data), max_examples)
    data = data[:max(num_examples, task_meta["num_fewshot"] + 1)]
    correct = evaluated = malformed = 0
    for idx in range(rank, num_examples, world_size):
        try:
            correct += evaluate_example(idx, model, tokenizer, data, device, task_meta)
            evaluated += 1
        except (MalformedItem, KeyError, TypeError, IndexError, AttributeError) as e:
            malformed += 1
            if stats is not None:
                stats.setdefault("errors", []).append(f"item {idx}: {e}")
    correct, evaluated, malformed = sum_across_ranks([correct, evaluated, malformed], device)
    if stats is not None:
        stats["evaluated"], stats["malformed"] = evaluated, malformed
    return correct / evaluated if evaluated > 0 else 0.0
