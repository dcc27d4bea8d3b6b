"""
What each post-training stage exists for, checked on the real task mixtures of the data pack:
SFT learns only the assistant's tokens; midtraining mixes its tasks in proportion to their sizes.
(RL: tests/test_chat_rl.py shows the policy gradient raising a toy reward and checks pass@k.)
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from stage_setup import read_checkpoint, save_model_checkpoint, write_identity


def assistant_target_positions(ids, tokenizer):
    """Indices j of the tokens an assistant turn produces (its text and its <|assistant_end|>),
    found from the special tokens alone, independently of the tokenizer's mask."""
    start, end = tokenizer.encode_special("<|assistant_start|>"), tokenizer.encode_special("<|assistant_end|>")
    out_start, out_end = tokenizer.encode_special("<|output_start|>"), tokenizer.encode_special("<|output_end|>")
    positions, inside, in_output = [], False, False
    for j, token in enumerate(ids):
        if token == start:
            inside = True
            continue
        if token == out_start:
            in_output = True
        if inside and not in_output:
            positions.append(j)
        if token == out_end:
            in_output = False
        if token == end:
            inside = False
    return positions


def test_sft_loss_counts_only_the_assistant_tokens(data_pack, base_dir, byte_tokenizer, capsys):
    """Step 0's validation loss (2 rows) and training token count (2 rows), recomputed by hand from
    the mid checkpoint with targets only where the assistant speaks: training on the prompt, or on
    nothing but the prompt, gives other numbers."""
    from scripts import chat_sft
    from tasks.common import TaskMixture
    save_model_checkpoint(base_dir, "mid_checkpoints", byte_tokenizer, seq_len=128)
    write_identity(base_dir)
    max_seq_len = 1024
    chat_sft.main(["--device_type=cpu", f"--max_seq_len={max_seq_len}", "--device_batch_size=2",
                   "--target_examples_per_step=2", "--num_iterations=1", "--eval_every=1", "--eval_steps=1",
                   "--eval_metrics_every=-1"])
    log = capsys.readouterr().out
    logged_val = float(re.search(r"Step 00000 \| Validation loss: ([0-9.]+)", log).group(1))
    logged_tokens = int(re.search(r"Step 00000/00001 \| .*num_tokens: ([0-9,]+)", log).group(1).replace(",", ""))

    train_named, val_named = chat_sft.build_tasks()
    rows = {split: TaskMixture([task for _, task in named if len(task)])
            for split, named in (("train", train_named), ("val", val_named))}
    rendered = {split: [byte_tokenizer.render_conversation(rows[split][i], max_tokens=max_seq_len)[0]
                        for i in range(2)] for split in rows}

    train_targets = sum(len([j for j in assistant_target_positions(ids, byte_tokenizer) if j > 0])
                        for ids in rendered["train"])
    assert logged_tokens == train_targets

    from nanochat.gpt import GPT, GPTConfig
    params, meta = read_checkpoint(base_dir, "mid_checkpoints", "d1", 0)
    model = GPT(GPTConfig(**meta["model_config"]))
    model.load_state_dict(params)
    model.eval()
    losses = []
    for ids in rendered["val"]:
        positions = [j for j in assistant_target_positions(ids, byte_tokenizer) if j > 0]
        assert 0 < len(positions) < len(ids) - 1  # both prompt and reply tokens in the row
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]]))[0].float()
        token_losses = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        losses.extend(token_losses[j - 1].item() for j in positions)
    expected = sum(losses) / len(losses)
    assert logged_val == pytest.approx(expected, abs=2e-6)


def test_mid_mixture_holds_every_task_in_proportion(data_pack, base_dir, byte_tokenizer, capsys):
    """The real midtraining mixture: every task at its size (the identity file twice), shuffled so that
    any stretch of training sees each task at its share of the whole."""
    from scripts import mid_train
    from tasks.common import TaskMixture
    save_model_checkpoint(base_dir, "base_checkpoints", byte_tokenizer, seq_len=32)
    write_identity(base_dir, n=8)
    mid_train.main(["--device_type=cpu", "--max_seq_len=32", "--device_batch_size=1", "--total_batch_size=32",
                    "--num_iterations=1", "--eval_every=-1", "--dry_run=1"])
    log = capsys.readouterr().out
    table = dict(re.findall(r"^  (\S.*?)\s{2,}([0-9,]+) conversations$", log.split("val mixture:")[0], re.M))
    sizes = {name: int(n.replace(",", "")) for name, n in table.items()}
    assert sizes == {"SmolTalk train": 12110, "MMLU all/dev (fallback)": 285, "GSM8K main/train": 7473,
                     "identity": 8, "identity (2nd epoch)": 8, "SimpleSpelling": 200000, "SpellingBee": 80000}

    train_named, _ = mid_train.build_tasks()
    tasks = dict(train_named)
    first_user = {name: {tasks[name][i]["messages"][0]["content"] for i in range(len(tasks[name]))}
                  for name in ("SmolTalk train", "GSM8K main/train")}

    def kind(conversation):
        text = conversation["messages"][0]["content"]
        if text.startswith("Spell the word:"):
            return "SimpleSpelling"
        if text.startswith("Multiple Choice question:"):
            return "MMLU all/dev (fallback)"
        if text.startswith("who are you?"):
            return "identity"
        for name, texts in first_user.items():
            if text in texts:
                return name
        return "SpellingBee"

    mixture = TaskMixture([task for _, task in train_named if len(task)])
    n = 3000
    counts = {}
    for i in range(n):
        label = kind(mixture[i])
        counts[label] = counts.get(label, 0) + 1
    total = sum(sizes.values())
    for name in ("SmolTalk train", "GSM8K main/train", "SimpleSpelling", "SpellingBee"):
        share = sizes[name] / total
        sigma = math.sqrt(n * share * (1 - share))
        assert abs(counts.get(name, 0) - n * share) < 5 * sigma, (name, counts, n * share)
