"""CORE scoring on a fake model whose preferences are known, so the right choice is computed by hand."""

import math

import pytest
import torch

from nanochat.core_eval import (MalformedItem, batch_sequences_lm, check_item, evaluate_example, evaluate_task,
                                find_common_length, forward_model, render_prompts_lm, render_prompts_mc,
                                render_prompts_schema, split_malformed, stack_sequences)

VOCAB = 265  # byte_tokenizer: 256 bytes + 9 specials


class NextTokenTable:
    """logits[b, t] strongly favour table[input_ids[b, t]] (a deterministic bigram 'model')."""

    def __init__(self, table, default=None):
        self.table, self.default = table, default

    def __call__(self, input_ids):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for b in range(input_ids.size(0)):
            for t in range(input_ids.size(1)):
                nxt = self.table.get(int(input_ids[b, t]), self.default)
                if nxt is not None:
                    logits[b, t, nxt] = 10.0
        return logits


def meta(task_type, shots=0, delim=" "):
    return dict(task_type=task_type, num_fewshot=shots, continuation_delimiter=delim)


def test_rendering_matches_the_spec_examples():
    shots = [{"context": "C1 ", "continuation": "x"}]
    without, with_ = render_prompts_lm({"context": "C2  ", "continuation": "y"}, " ", shots)
    assert without == "C1 x\n\nC2" and with_ == "C1 x\n\nC2 y"
    mc = render_prompts_mc({"query": "Q", "choices": ["a", "b"], "gold": 0}, ": ",
                           [{"query": "S", "choices": ["u", "v"], "gold": 1}])
    assert mc == ["S: v\n\nQ: a", "S: v\n\nQ: b"]
    schema = render_prompts_schema({"context_options": ["p", "q"], "continuation": "c", "gold": 0}, " ")
    assert schema == ["p c", "q c"]


def test_common_lengths_and_stacking():
    assert find_common_length([[1, 2, 3], [1, 2, 4]], "left") == 2
    assert find_common_length([[9, 2, 3], [1, 2, 3]], "right") == 2
    assert find_common_length([[1, 2], [1, 2, 3]], "left") == 2
    assert stack_sequences([[1], [2, 3]], 0).tolist() == [[1, 0], [2, 3]]


def test_forward_model_losses_and_predictions():
    model = NextTokenTable({ord("a"): ord("b")})
    ids = torch.tensor([[ord("a"), ord("b"), ord("c")]])
    losses, preds = forward_model(model, ids)
    assert preds[0, 0].item() == ord("b")
    assert losses[0, 0].item() < 0.1  # 'b' after 'a' was expected
    assert losses[0, 1].item() == pytest.approx(math.log(VOCAB))  # nothing is expected after 'b': uniform
    assert torch.isnan(losses[0, 2])  # the last position has no next token


def test_multiple_choice_picks_the_choice_the_model_prefers(byte_tokenizer):
    # after the delimiter ' ' the model expects 'b': the choice "b" has the lowest loss
    model = NextTokenTable({ord(" "): ord("b")})
    data = [{"query": "Q", "choices": ["a", "b", "c"], "gold": 1},
            {"query": "R", "choices": ["b", "c"], "gold": 1}]
    assert evaluate_example(0, model, byte_tokenizer, data, "cpu", meta("multiple_choice")) is True
    assert evaluate_example(1, model, byte_tokenizer, data, "cpu", meta("multiple_choice")) is False
    assert evaluate_task(model, byte_tokenizer, data, "cpu", meta("multiple_choice")) == 0.5


def test_schema_picks_the_context_that_best_predicts_the_continuation(byte_tokenizer):
    # 'y' is followed by ' ' and ' ' by 'z': only the option ending in 'y' predicts " z" well
    model = NextTokenTable({ord("y"): ord(" "), ord(" "): ord("z")})
    data = [{"context_options": ["x", "y"], "continuation": "z", "gold": 1},
            {"context_options": ["y", "x"], "continuation": "z", "gold": 1}]
    assert evaluate_example(0, model, byte_tokenizer, data, "cpu", meta("schema")) is True
    assert evaluate_example(1, model, byte_tokenizer, data, "cpu", meta("schema")) is False


def test_language_modeling_needs_every_continuation_token(byte_tokenizer):
    # the scored span is " <continuation>" (the stripped prompt stops before the delimiter)
    model = NextTokenTable({ord("b"): ord(" "), ord(" "): ord("c"), ord("c"): ord("d"), ord("d"): ord("e")})
    data = [{"context": "ab", "continuation": "cde"},
            {"context": "ab", "continuation": "cdx"},
            {"context": "ab", "continuation": "c"}]
    results = [evaluate_example(i, model, byte_tokenizer, data, "cpu", meta("language_modeling")) for i in range(3)]
    assert results == [True, False, True]


def test_fewshot_examples_are_deterministic_and_exclude_the_item(byte_tokenizer):
    seen = []

    class Recorder(NextTokenTable):
        def __call__(self, input_ids):
            seen.append(byte_tokenizer.decode(input_ids[0].tolist()))
            return super().__call__(input_ids)

    data = [{"context": f"c{i}", "continuation": f"{i}"} for i in range(6)]
    model = Recorder({})
    evaluate_example(2, model, byte_tokenizer, data, "cpu", meta("language_modeling", shots=3))
    evaluate_example(2, model, byte_tokenizer, data, "cpu", meta("language_modeling", shots=3))
    assert seen[0] == seen[1] and seen[0].count("\n\n") == 3 and "c2 2\n\n" not in seen[0]
    # asking for all 5 other items as shots: each item's prompt holds exactly the others, never itself
    for idx in range(6):
        seen.clear()
        evaluate_example(idx, model, byte_tokenizer, data, "cpu", meta("language_modeling", shots=5))
        shots = seen[0].removeprefix("<|bos|>").split("\n\n")[:-1]
        assert sorted(shots) == [f"c{j} {j}" for j in range(6) if j != idx], (idx, seen[0])


def test_left_crop_for_models_with_a_context_limit(byte_tokenizer):
    seen = []

    class FourTokenModel(NextTokenTable):
        max_seq_len = 4

        def __call__(self, input_ids):
            seen.extend(byte_tokenizer.decode(row.tolist()) for row in input_ids)
            return super().__call__(input_ids)

    model = FourTokenModel({ord(" "): ord("b")})
    data = [{"query": "a long question", "choices": ["a", "b"], "gold": 1}]
    assert evaluate_example(0, model, byte_tokenizer, data, "cpu", meta("multiple_choice")) is True
    assert seen == ["on a", "on b"]  # the last 4 tokens of each prompt: the choice is kept, the start dropped


def test_malformed_items_are_counted_not_fatal(byte_tokenizer):
    with pytest.raises(MalformedItem, match="missing field"):
        check_item({"query": "Q", "gold": 0}, "multiple_choice")
    with pytest.raises(MalformedItem, match="gold"):
        check_item({"query": "Q", "choices": ["a", "b"], "gold": 5}, "multiple_choice")
    good, bad = split_malformed([{"context": "a", "continuation": "b"}, {"context": "a"}, "junk"], "language_modeling")
    assert len(good) == 1 and bad == 2
    # an item that cannot be rendered is counted in stats and left out of the mean
    model = NextTokenTable({ord("b"): ord(" "), ord(" "): ord("c")})
    data = [{"context": "ab", "continuation": "c"}, {"context": None, "continuation": "c"}]
    stats = {}
    assert evaluate_task(model, byte_tokenizer, data, "cpu", meta("language_modeling"), stats=stats) == 1.0
    assert stats["malformed"] == 1 and stats["evaluated"] == 1


def test_lm_prefix_check(byte_tokenizer):
    tokens, starts, ends = batch_sequences_lm(byte_tokenizer, ["ab", "ab c"])
    assert starts == [3] and ends == [5] and len(tokens) == 1


class PromptRecorder:
    """The tokenizer, recording every prompt CORE renders for the model."""

    def __init__(self, tokenizer):
        self.tokenizer, self.prompts = tokenizer, []

    def __call__(self, prompts, **kwargs):
        self.prompts.extend(prompts)
        return self.tokenizer(prompts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_max_per_task_below_the_shot_count_runs_with_every_shot(base_dir, byte_tokenizer):
    """`--max-per-task=2` on a 3-shot task: 2 items evaluated, each prompt still has its 3 shots."""
    import os
    from test_base_eval import make_bundle, tiny_model
    from scripts.base_eval import evaluate_model
    bundle = make_bundle(base_dir)
    with open(os.path.join(bundle, "core.yaml"), "w") as f:
        f.write("icl_tasks:\n-\n  label: winograd\n  dataset_uri: language_understanding/winograd_wsc.jsonl\n"
                "  num_fewshot: [3]\n  icl_task_type: schema\n")
    recorder = PromptRecorder(byte_tokenizer)
    out = evaluate_model(tiny_model(), recorder, "cpu", max_per_task=2)
    assert out["results"]["winograd"] in (0.0, 0.5, 1.0)
    assert len(recorder.prompts) == 2 * 2  # two items, two context options each
    assert all(prompt.count("\n\n") == 3 for prompt in recorder.prompts)
