"""
Evaluate a chat model on categorical tasks (ARC, MMLU: pick the likeliest answer letter) and
generative tasks (GSM8K, HumanEval, SpellingBee: sample and check), and summarise as ChatCORE.

    python -m scripts.chat_eval -i sft
    python -m scripts.chat_eval -i mid -a "ARC-Easy|GSM8K" -x 100
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -- -i sft
"""

import argparse
from functools import partial

import torch

from nanochat.common import (autocast_context, autodetect_device_type, compute_cleanup, compute_init, get_dist_info,
                             print0, sum_across_ranks)
from tasks.arc import ARC
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.spellingbee import SpellingBee

TASK_FACTORIES = {
    "ARC-Easy": partial(ARC, subset="ARC-Easy", split="test"),
    "ARC-Challenge": partial(ARC, subset="ARC-Challenge", split="test"),
    "MMLU": partial(MMLU, subset="all", split="test"),
    "GSM8K": partial(GSM8K, subset="main", split="test"),
    "HumanEval": HumanEval,
    "SpellingBee": partial(SpellingBee, size=256, split="test"),
}
ALL_TASKS = list(TASK_FACTORIES)
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}


def run_generative_eval(task_object, tokenizer, model, engine, num_samples, max_new_tokens, temperature, top_k,
                        max_problems=None):
    """pass@num_samples: a problem passes if any of its samples passes task.evaluate."""
    _, rank, _, world_size = get_dist_info()
    num_problems = len(task_object) if max_problems is None else min(len(task_object), max_problems)
    num_passed, total = 0, 0
    for i in range(rank, num_problems, world_size):
        conversation = task_object[i]
        prompt = tokenizer.render_for_completion(conversation)
        results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                           temperature=temperature, top_k=top_k)
        total += 1
        num_passed += any(task_object.evaluate(conversation, tokenizer.decode(r[len(prompt):])) for r in results)
        print(f"\r\033[KRank {rank} | {num_passed}/{total} ({100 * num_passed / total:.2f}%)", end="", flush=True)
    print()
    num_passed, total = sum_across_ranks([num_passed, total], model.get_device())
    print0("=" * 50)
    print0(f"Final: {num_passed}/{total} ({100 * num_passed / max(total, 1):.2f}%)")
    return num_passed / total if total else 0.0


def _letter_token_id(tokenizer, letter):
    """Each answer letter must be a single token: its logit is the answer's score."""
    encoded = tokenizer.encode(letter)
    if len(encoded) != 1:
        raise ValueError(f"answer letter {letter!r} encodes to {len(encoded)} tokens; "
                         "categorical eval needs exactly one")
    return encoded[0]


@torch.no_grad()
def run_categorical_eval(task_object, tokenizer, model, batch_size, max_problems=None):
    """Pick the answer letter with the highest logit right after <|assistant_start|>."""
    _, rank, _, world_size = get_dist_info()
    device = model.get_device()
    bos = tokenizer.get_bos_token_id()
    num_problems = len(task_object) if max_problems is None else min(len(task_object), max_problems)
    num_batches = -(-num_problems // batch_size)
    num_passed, total = 0, 0
    for b in range(rank, num_batches, world_size):
        conversations = [task_object[i] for i in range(b * batch_size, min((b + 1) * batch_size, num_problems))]
        prompts = [tokenizer.render_for_completion(conversation) for conversation in conversations]
        max_length = max(len(p) for p in prompts)
        padded = [p + [bos] * (max_length - len(p)) for p in prompts]  # right-padded: answers stay in place
        logits = model(torch.tensor(padded, dtype=torch.long, device=device))
        for prompt, row_logits, conversation in zip(prompts, logits, conversations):
            letters = conversation["letters"]
            ids = [_letter_token_id(tokenizer, letter) for letter in letters]
            predicted_letter = letters[row_logits[len(prompt) - 1, ids].argmax(dim=-1).item()]
            num_passed += int(task_object.evaluate(conversation, predicted_letter))
            total += 1
    num_passed, total = sum_across_ranks([num_passed, total], device)
    average = num_passed / total if total else 0.0
    print0(f"Final: {num_passed}/{total} ({100 * average:.2f}%)")
    return average


def parse_task_names(task_name):
    """None -> all tasks; 'A|B' -> [A, B]; an unknown name is an error listing the valid ones."""
    if task_name is None:
        return list(ALL_TASKS)
    names = [name.strip() for name in task_name.split("|") if name.strip()]
    unknown = [name for name in names if name not in TASK_FACTORIES]
    if unknown or not names:
        raise ValueError(f"unknown task name(s) {unknown or [task_name]}; valid names: {', '.join(ALL_TASKS)} "
                         "(combine with '|', e.g. -a 'ARC-Easy|GSM8K')")
    return names


def run_chat_eval(task_name, model, tokenizer, engine, batch_size=1, num_samples=1, max_new_tokens=512,
                  temperature=0.0, top_k=50, max_problems=None):
    parse_task_names(task_name)  # clear error for a bad name
    task_object = TASK_FACTORIES[task_name]()
    if task_object.eval_type == "generative":
        return run_generative_eval(task_object, tokenizer, model, engine, num_samples, max_new_tokens,
                                   temperature, top_k, max_problems=max_problems)
    return run_categorical_eval(task_object, tokenizer, model, batch_size, max_problems=max_problems)


def chatcore(results):
    """Mean baseline-centered accuracy over all six tasks; None unless all of them ran."""
    if not all(name in results for name in ALL_TASKS):
        return None
    return sum((results[name] - BASELINES[name]) / (1.0 - BASELINES[name]) for name in ALL_TASKS) / len(ALL_TASKS)


def main():
    parser = argparse.ArgumentParser(description="Evaluate a chat model")
    parser.add_argument("-i", "--source", type=str, required=True, help="Source of the model: base|mid|sft|rl")
    parser.add_argument("-a", "--task-name", type=str, default=None, help="Task name(s), '|'-separated. Default = all")
    parser.add_argument("-d", "--dtype", type=str, default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("-t", "--temperature", type=float, default=0.0)
    parser.add_argument("-m", "--max-new-tokens", type=int, default=512)
    parser.add_argument("-n", "--num-samples", type=int, default=1)
    parser.add_argument("-k", "--top-k", type=int, default=50)
    parser.add_argument("-b", "--batch-size", type=int, default=8, help="Batch size for categorical evaluation")
    parser.add_argument("-g", "--model-tag", type=str, default=None, help="Model tag to load")
    parser.add_argument("-s", "--step", type=int, default=None, help="Step to load")
    parser.add_argument("-x", "--max-problems", type=int, default=None, help="Max problems to evaluate")
    parser.add_argument("--device-type", default="", choices=["cuda", "cpu", "mps", ""], help="empty = autodetect")
    args = parser.parse_args()
    task_names = parse_task_names(args.task_name)  # fail before loading the model
    from nanochat.checkpoint_manager import SOURCE_DIRS, load_model
    if args.source not in SOURCE_DIRS:  # any source load_model knows, base included (as in the original)
        raise SystemExit(f"--source must be one of {'|'.join(SOURCE_DIRS)}, got {args.source!r}")
    from nanochat.engine import Engine

    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    autocast_ctx = autocast_context(device_type, args.dtype)

    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    engine = Engine(model, tokenizer)

    results = {}
    for task_name in task_names:
        with autocast_ctx:
            results[task_name] = run_chat_eval(task_name, model, tokenizer, engine, batch_size=args.batch_size,
                                               num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                                               temperature=args.temperature, top_k=args.top_k,
                                               max_problems=args.max_problems)
        print0(f"{task_name} accuracy: {100 * results[task_name]:.2f}%")

    chatcore_metric = chatcore(results)
    if chatcore_metric is not None:
        print0(f"ChatCORE metric: {chatcore_metric:.4f}")
    chatcore_entry = None if chatcore_metric is None else {"ChatCORE metric": chatcore_metric}
    from nanochat.report import get_report
    get_report().log(section="Chat evaluation " + args.source, data=[vars(args), results, chatcore_entry])
    compute_cleanup()


if __name__ == "__main__":
    main()
