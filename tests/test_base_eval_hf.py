"""`python -m scripts.base_eval --hf-path=<folder>`: a small GPT-2 written here by transformers, with its
own tokenizer.json, scored on the data pack's CORE bundle (no download)."""

import csv
import os

import pytest

from stage_setup import run_stage

CONTEXT = 256  # far shorter than the 10-shot prompts: they must be cropped to it, not crash


def write_tiny_gpt2(folder):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["the cat sat on the mat", "a question and an answer", "0123456789"], trainer)
    os.makedirs(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=CONTEXT, n_embd=32,
                                     n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


@pytest.mark.slow  # transformers import and 21 tasks
def test_base_eval_scores_a_local_hf_model_on_core(data_pack, base_dir, tmp_path):
    folder = str(tmp_path / "tiny-gpt2")
    write_tiny_gpt2(folder)
    out = run_stage("scripts.base_eval", [f"--hf-path={folder}", "--max-per-task=2"], base_dir)
    assert f"Model: {folder}" in out
    assert "Malformed rows left out" not in out  # over-long prompts were cropped, not failed and dropped
    slug = folder.replace("/", "-")
    with open(os.path.join(base_dir, "base_eval", f"{slug}.csv")) as f:
        rows = list(csv.reader(f))
    tasks = {row[0].strip(): row for row in rows[1:-1]}
    assert len(tasks) == 22 and "skipped" in ",".join(tasks["coqa"])
    accuracies = [float(row[1]) for label, row in tasks.items() if label != "coqa"]
    assert all(a in (0.0, 0.5, 1.0) for a in accuracies)  # 2 items per task
    with open(os.path.join(base_dir, "report", "base-model-evaluation.md")) as f:
        report = f.read()
    assert f"Model: {folder}" in report and "CORE over 21 of 22 tasks" in report
