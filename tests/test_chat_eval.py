"""chat_eval: categorical letter picking, pass@k generation, task selection, and a full run with a report."""

import os
import sys

import pytest
import torch

from scripts.chat_eval import (ALL_TASKS, chatcore, parse_task_names, run_categorical_eval, run_generative_eval)
from tasks.common import Task


def test_task_selection_and_errors():
    assert parse_task_names(None) == ALL_TASKS
    assert parse_task_names("ARC-Easy|GSM8K") == ["ARC-Easy", "GSM8K"]
    with pytest.raises(ValueError, match=r"unknown task name\(s\) \['Bogus'\]; valid names: ARC-Easy, ARC-Challenge"):
        parse_task_names("ARC-Easy|Bogus")


def test_chatcore_needs_all_six_tasks():
    results = {name: 0.25 if name in ("ARC-Easy", "ARC-Challenge", "MMLU") else 0.5 for name in ALL_TASKS}
    assert chatcore(results) == pytest.approx(0.25)  # three at baseline (0), three at 0.5
    del results["HumanEval"]
    assert chatcore(results) is None


class LetterTask(Task):
    """Categorical task with known golds."""

    def __init__(self, golds, **kw):
        super().__init__(**kw)
        self.golds = golds

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.golds)

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"question {index}"},
                             {"role": "assistant", "content": self.golds[index]}], "letters": ["A", "B", "C"]}

    def evaluate(self, conversation, response):
        return response == conversation["messages"][-1]["content"]


class FavourToken:
    """A model whose logits always prefer one token."""

    def __init__(self, token_id, vocab=265):
        self.token_id, self.vocab, self.calls = token_id, vocab, []

    def get_device(self):
        return torch.device("cpu")

    def __call__(self, ids):
        self.calls.append(tuple(ids.shape))
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[..., self.token_id] = 5.0
        return logits


def test_categorical_eval_picks_the_highest_letter_logit(byte_tokenizer):
    golds = ["B", "A", "B", "C", "B", "A", "B"]
    model = FavourToken(ord("B"))
    acc = run_categorical_eval(LetterTask(golds), byte_tokenizer, model, batch_size=3)
    assert acc == pytest.approx(4 / 7)
    assert len(model.calls) == 3  # ceil(7 / 3) batches
    assert run_categorical_eval(LetterTask(golds), byte_tokenizer, model, batch_size=3, max_problems=2) == 0.5


class ScriptedEngine:
    """Returns prepared completions; the thing under test is run_generative_eval's pass@k bookkeeping."""

    def __init__(self, tokenizer, completions):
        self.tokenizer, self.completions, self.calls = tokenizer, completions, 0

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        samples = self.completions[self.calls]
        self.calls += 1
        assert len(samples) == num_samples
        return [list(tokens) + self.tokenizer.encode(s) for s in samples], None


class AnswerTask(Task):
    def __init__(self, answers, **kw):
        super().__init__(**kw)
        self.answers = answers

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.answers)

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": self.answers[index]}]}

    def evaluate(self, conversation, completion):
        return completion == conversation["messages"][-1]["content"]


def test_generative_eval_is_pass_at_k(byte_tokenizer):
    engine = ScriptedEngine(byte_tokenizer, [["x", "1"], ["2", "y"], ["z", "w"]])
    model = FavourToken(0)
    acc = run_generative_eval(AnswerTask(["1", "2", "3"]), byte_tokenizer, model, engine, num_samples=2,
                              max_new_tokens=4, temperature=1.0, top_k=5)
    assert acc == pytest.approx(2 / 3) and engine.calls == 3


def test_chat_eval_main_runs_every_task_and_logs_chatcore(data_pack, base_dir, byte_tokenizer, monkeypatch):
    """A tiny sft checkpoint through the real Engine on all six tasks (2 problems each, 4 new tokens)."""
    from test_base_eval import save_tiny_checkpoint
    from scripts import chat_eval
    save_tiny_checkpoint(base_dir, byte_tokenizer, "chatsft_checkpoints")
    monkeypatch.setattr(sys, "argv", ["chat_eval", "-i", "sft", "-x", "2", "-m", "4", "-b", "2",
                                      "--device-type=cpu", "-d", "float32"])
    chat_eval.main()
    report = open(os.path.join(base_dir, "report", "chat-evaluation-sft.md")).read()
    for name in ALL_TASKS:
        assert f"- {name}: " in report
    assert "- ChatCORE metric: " in report


def test_chat_eval_accepts_a_base_model(data_pack, base_dir, byte_tokenizer, monkeypatch):
    """`-i base` evaluates a base checkpoint like any other source load_model knows."""
    from test_base_eval import save_tiny_checkpoint
    from scripts import chat_eval
    save_tiny_checkpoint(base_dir, byte_tokenizer, "base_checkpoints")
    monkeypatch.setattr(sys, "argv", ["chat_eval", "-i", "base", "-a", "ARC-Easy", "-x", "2", "-b", "2",
                                      "--device-type=cpu", "-d", "float32"])
    chat_eval.main()
    report = open(os.path.join(base_dir, "report", "chat-evaluation-base.md")).read()
    assert "- ARC-Easy: " in report
    monkeypatch.setattr(sys, "argv", ["chat_eval", "-i", "nope", "-a", "ARC-Easy"])
    with pytest.raises(SystemExit, match=r"base\|mid\|sft\|rl, got .nope"):
        chat_eval.main()


def test_chat_eval_rejects_unknown_task_before_loading(monkeypatch):
    from scripts import chat_eval
    monkeypatch.setattr(sys, "argv", ["chat_eval", "-i", "sft", "-a", "Nope"])
    with pytest.raises(ValueError, match="valid names"):
        chat_eval.main()
