"""base_eval: the CORE driver over a bundle (missing files skipped and labelled, malformed rows counted),
CSV, report."""

import json
import os
import random
import re
from dataclasses import asdict

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from scripts.base_eval import core_label, evaluate_model, load_core_tasks, write_csv

CORE_YAML = """icl_tasks:
-
  label: copa
  dataset_uri: commonsense_reasoning/copa.jsonl
  num_fewshot: [0]
  icl_task_type: multiple_choice
-
  label: winograd
  dataset_uri: language_understanding/winograd_wsc.jsonl
  num_fewshot: [1]
  icl_task_type: schema
-
  label: lambada_openai
  dataset_uri: language_understanding/lambada_openai.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
-
  label: coqa
  dataset_uri: reading_comprehension/coqa.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
  continuation_delimiter: "\\nAnswer: "
"""
META_CSV = "Eval Task,Random baseline\ncopa,50\nwinograd,50\nlambada_openai,0\ncoqa,0\n"


def tiny_model(vocab_size=265, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=256, vocab_size=vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    model = GPT(config)
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # not all-zero logits: choices get different losses
    return model.eval()


def save_tiny_checkpoint(base_dir, tokenizer, source_dir, step=10):
    """A tokenizer and a tiny GPT in the checkpoint layout, so load_model(...) finds them."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.tokenizer import save_token_bytes
    tok_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tok_dir)
    save_token_bytes(tokenizer, tok_dir)
    model = tiny_model(tokenizer.get_vocab_size())
    save_checkpoint(os.path.join(base_dir, source_dir, "d1"), step, model.state_dict(), None,
                    {"model_config": asdict(model.config), "step": step})
    return model


def make_bundle(base_dir):
    bundle = os.path.join(base_dir, "eval_bundle")
    data = os.path.join(bundle, "eval_data")
    os.makedirs(os.path.join(data, "commonsense_reasoning"))
    os.makedirs(os.path.join(data, "language_understanding"))
    with open(os.path.join(bundle, "core.yaml"), "w") as f:
        f.write(CORE_YAML)
    with open(os.path.join(bundle, "eval_meta_data.csv"), "w") as f:
        f.write(META_CSV)
    copa = [{"query": f"Q{i}", "choices": ["yes", "no"], "gold": i % 2} for i in range(6)]
    lines = [json.dumps(r) for r in copa] + ["{broken json", json.dumps({"query": "no choices", "gold": 0})]
    with open(os.path.join(data, "commonsense_reasoning", "copa.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    winograd = [{"context_options": [f"A{i}", f"B{i}"], "continuation": "went home", "gold": 0} for i in range(4)]
    with open(os.path.join(data, "language_understanding", "winograd_wsc.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in winograd) + "\n")
    lambada = [{"context": f"the number {i}", "continuation": "is"} for i in range(3)]
    with open(os.path.join(data, "language_understanding", "lambada_openai.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in lambada) + "\n")
    return bundle


def test_evaluate_model_skips_missing_files_and_counts_malformed_rows(base_dir, byte_tokenizer, capsys, tmp_path):
    make_bundle(base_dir)
    out = evaluate_model(tiny_model(), byte_tokenizer, "cpu", max_per_task=-1)
    assert set(out["results"]) == {"copa", "winograd", "lambada_openai"}
    assert out["skipped_tasks"] == ["coqa"]
    assert out["malformed"]["copa"] == 2 and out["malformed"]["winograd"] == 0
    assert out["core_label"].startswith("CORE over 3 of 22 tasks (coqa skipped")
    assert ":" not in out["core_label"]  # the report card splits metric lines on ':'
    for label, acc in out["results"].items():
        assert 0.0 <= acc <= 1.0
    centered = out["centered_results"]
    assert centered["copa"] == pytest.approx((out["results"]["copa"] - 0.5) / 0.5)
    assert out["core_metric"] == pytest.approx(sum(centered.values()) / 3)
    assert "skipping CORE task coqa" in capsys.readouterr().out

    table = write_csv(str(tmp_path / "x.csv"), out)
    lines = table.splitlines()
    assert lines[0].startswith("Task") and len(lines[0].split(",")[0]) == 35
    assert lines[-1].startswith("CORE_3of22") and "coqa" in lines[-2] and "skipped" in lines[-2]
    assert core_label(22, []) == "CORE"


class Recorder:
    """Wraps a model and keeps the text of every row it is asked to score."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.texts = model, tokenizer, []

    def __call__(self, input_ids):
        self.texts.extend(self.tokenizer.decode(row.tolist()) for row in input_ids)
        return self.model(input_ids)


def copa_queries_scored(texts):
    return {q for text in texts for q in re.findall(r"Q\d", text)}


def test_max_per_task_crops_to_the_first_items_of_the_seeded_shuffle(base_dir, byte_tokenizer):
    make_bundle(base_dir)
    everything = Recorder(tiny_model(), byte_tokenizer)
    evaluate_model(everything, byte_tokenizer, "cpu", max_per_task=-1)
    assert copa_queries_scored(everything.texts) == {f"Q{i}" for i in range(6)}

    cropped = Recorder(tiny_model(), byte_tokenizer)
    evaluate_model(cropped, byte_tokenizer, "cpu", max_per_task=2)
    copa = [{"query": f"Q{i}"} for i in range(6)]  # the well-formed copa rows, in file order
    random.Random(1337).shuffle(copa)
    assert copa_queries_scored(cropped.texts) == {copa[0]["query"], copa[1]["query"]}
    lambada = {m for t in cropped.texts for m in re.findall(r"the number \d", t)}
    assert len(lambada) == 2  # every task is cropped, not only the first


def test_data_pack_bundle_is_read_in_place(data_pack, base_dir):
    from scripts.base_eval import get_eval_bundle_dir
    bundle = get_eval_bundle_dir()
    assert bundle == os.path.join(data_pack, "eval_bundle")
    tasks = load_core_tasks(bundle)
    assert len(tasks) == 22
    missing = [t["label"] for t in tasks if not os.path.exists(t["path"])]
    assert missing == ["coqa"]
    jeopardy = next(t for t in tasks if t["label"] == "jeopardy")
    assert jeopardy["continuation_delimiter"] == "\nAnswer: " and jeopardy["num_fewshot"] == 10


def test_main_writes_csv_and_report(base_dir, byte_tokenizer, monkeypatch, capsys):
    import sys
    from scripts import base_eval
    make_bundle(base_dir)
    save_tiny_checkpoint(base_dir, byte_tokenizer, "base_checkpoints")
    monkeypatch.setattr(sys, "argv", ["base_eval", "--max-per-task=4"])
    base_eval.main()
    csv_path = os.path.join(base_dir, "base_eval", "base_model_000010.csv")
    assert os.path.exists(csv_path)
    report = open(os.path.join(base_dir, "report", "base-model-evaluation.md")).read()
    assert "CORE over 3 of 22 tasks" in report and "Model: base_model (step 10)" in report
    assert "coqa" in report


@pytest.mark.slow  # importing transformers dominates
def test_hf_model_wrapper_crops_to_its_context(byte_tokenizer):
    """--hf-path models go through ModelWrapper; prompts longer than its context are left-cropped, not fatal."""
    transformers = pytest.importorskip("transformers")
    from nanochat.core_eval import evaluate_example
    from scripts.base_eval import ModelWrapper
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=265, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    wrapper = ModelWrapper(hf_model, max_seq_len=16)
    query, choices = "a question that is much longer than sixteen bytes", ["yes", "no"]
    # by hand: each prompt's last 16 tokens go through the model; the choice's own tokens are scored
    mean_losses = []
    for choice in choices:
        ids = byte_tokenizer.encode(f"{query} {choice}", prepend=byte_tokenizer.get_bos_token_id())[-16:]
        with torch.no_grad():
            logits = hf_model(torch.tensor([ids])).logits[0]
        n = len(choice)
        losses = torch.nn.functional.cross_entropy(logits[-n - 1:-1], torch.tensor(ids[-n:]), reduction="none")
        mean_losses.append(losses.mean().item())
    assert mean_losses[0] != mean_losses[1]
    preferred = min(range(2), key=mean_losses.__getitem__)
    task_meta = dict(task_type="multiple_choice", num_fewshot=0, continuation_delimiter=" ")
    for gold in (0, 1):
        data = [{"query": query, "choices": choices, "gold": gold}]
        assert evaluate_example(0, wrapper, byte_tokenizer, data, "cpu", task_meta) is (gold == preferred)
