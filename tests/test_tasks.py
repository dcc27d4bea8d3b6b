"""Tasks: well-formed conversations from the data pack, evaluate() scores right 1 and wrong 0,
bad data errors clearly."""

import json

import pytest

from tasks.common import Task, TaskDataError, TaskMixture, TaskSequence, render_mc


def assert_well_formed(conversation):
    messages = conversation["messages"]
    assert len(messages) >= 2
    for i, message in enumerate(messages):
        assert message["role"] == ("user" if i % 2 == 0 else "assistant")
        content = message["content"]
        if isinstance(content, list):
            assert message["role"] == "assistant"
            assert all(part["type"] in ("text", "python", "python_output") and isinstance(part["text"], str)
                       for part in content)
        else:
            assert isinstance(content, str) and content


def test_render_mc_puts_letter_after_choice():
    text = render_mc("Why?", ["A", "B"], ["yes", "no"])
    assert text.splitlines()[:3] == ["Multiple Choice question: Why?", "- yes=A", "- no=B"]
    assert text.splitlines()[3] == ""


class ListTask(Task):
    def __init__(self, items, **kw):
        super().__init__(**kw)
        self.items = items

    def num_examples(self):
        return len(self.items)

    def get_example(self, index):
        return self.items[index]


def test_slicing_mixture_and_sequence():
    task = ListTask(list(range(10)), start=2, stop=9, step=3)
    assert len(task) == 3 and [task[i] for i in range(3)] == [2, 5, 8]
    a, b = ListTask(["a0", "a1"]), ListTask(["b0"])
    mixture = TaskMixture([a, b, b])  # b twice: oversampled
    assert sorted(mixture[i] for i in range(len(mixture))) == ["a0", "a1", "b0", "b0"]
    assert [mixture[i] for i in range(4)] == [TaskMixture([a, b, b])[i] for i in range(4)]  # deterministic
    sequence = TaskSequence([a, b])
    assert [sequence[i] for i in range(3)] == ["a0", "a1", "b0"]
    with pytest.raises(AssertionError):
        ListTask([], start=3, stop=1)


def test_arc(data_pack):
    from tasks.arc import ARC
    task = ARC("ARC-Easy", "test")
    assert len(task) == 2376 and task.eval_type == "categorical"
    for i in range(5):
        conversation = task[i]
        assert_well_formed(conversation)
        gold = conversation["messages"][-1]["content"]
        wrong = next(letter for letter in conversation["letters"] if letter != gold)
        assert task.evaluate(conversation, gold) == 1
        assert task.evaluate(conversation, wrong) == 0
    assert len(ARC("ARC-Challenge", "validation", stop=10)) == 10


def test_mmlu_and_availability(data_pack):
    from tasks.mmlu import MMLU
    task = MMLU("all", "test")
    assert len(task) == 14042 and len(MMLU.groups) == 57
    conversation = task[0]
    assert_well_formed(conversation)
    assert conversation["subject"] in MMLU.groups
    gold = conversation["messages"][-1]["content"]
    assert task.evaluate(conversation, gold) == 1
    assert task.evaluate(conversation, "A" if gold != "A" else "B") == 0
    assert MMLU.is_available("all", "dev")
    assert not MMLU.is_available("auxiliary_train", "train")
    assert not MMLU.is_available("all", "validation")
    from tasks.sources import DatasetUnavailable
    with pytest.raises(DatasetUnavailable, match="NANOCHAT_DATA_PACK"):
        MMLU("auxiliary_train", "train")


def test_gsm8k(data_pack):
    from tasks.gsm8k import GSM8K, extract_answer, parse_answer_parts
    task = GSM8K("main", "test")
    assert len(task) == 1319 and task.eval_type == "generative"
    conversation = task[0]
    assert_well_formed(conversation)
    parts = conversation["messages"][-1]["content"]
    answer = extract_answer(parts[-1]["text"])
    assert answer is not None
    assert task.evaluate(conversation, f"Let me think.\n#### {answer}") == 1
    assert task.evaluate(conversation, f"#### {int(float(answer)) + 1}") == 0
    assert task.evaluate(conversation, "no final answer") == 0
    assert task.reward(conversation, f"#### {answer}") == 1.0
    assert parse_answer_parts("a <<2*3=6>> b #### 6") == [
        {"type": "text", "text": "a "}, {"type": "python", "text": "2*3"},
        {"type": "python_output", "text": "6"}, {"type": "text", "text": " b #### 6"}]
    assert extract_answer("#### 1,234") == "1234"


def test_humaneval_canonical_passes_and_wrong_fails(data_pack):
    from tasks.humaneval import HumanEval, extract_program
    task = HumanEval()
    assert len(task) == 164
    for i in range(2):
        conversation = task[i]
        assert_well_formed(conversation)
        solution = conversation["messages"][-1]["content"]
        assert task.evaluate(conversation, f"```python\n{solution}\n```")
        assert not task.evaluate(conversation, f"def {conversation['entry_point']}(*args):\n    return None\n")
    assert extract_program("x\n```python\nprint(1)\n```\ny") == "print(1)"


def test_smoltalk(data_pack):
    from tasks.smoltalk import SmolTalk
    task = SmolTalk("test")
    assert len(task) == 375
    for i in range(20):
        assert_well_formed(task[i])


def test_spelling_tasks(data_pack, base_dir):
    from tasks.spellingbee import SimpleSpelling, SpellingBee
    task = SpellingBee(size=20, split="test")
    for i in range(20):
        conversation = task[i]
        assert_well_formed(conversation)
        parts = conversation["messages"][-1]["content"]
        word, letter = parts[2]["text"].split("'")[1], parts[2]["text"].split("'")[3]
        count = word.count(letter)
        assert parts[3]["text"] == str(count)
        assert task.evaluate(conversation, f"so #### {count}") == 1
        assert task.evaluate(conversation, f"so #### {count + 1}") == 0
    assert SpellingBee(size=5, split="test")[3] == task[3]  # deterministic per index
    assert SpellingBee(size=5, split="train")[0] != task[0]
    simple = SimpleSpelling(size=10, split="train")
    for i in range(10):
        conversation = simple[i]
        assert_well_formed(conversation)
        word = conversation["messages"][0]["content"].removeprefix("Spell the word: ")
        assert conversation["messages"][1]["content"] == f"{word}:{','.join(word)}"


def test_customjson(tmp_path, capsys):
    from tasks.customjson import CustomJSON
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path = tmp_path / "convs.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good * 2) + "\n")
    task = CustomJSON(str(path))
    assert len(task) == 2
    assert_well_formed(task[1])

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + "\n" + '[{"role": "user", "content": "Hi"\n')
    with pytest.raises(TaskDataError, match=r"broken\.jsonl:2: not valid JSON"):
        CustomJSON(str(broken))

    wrong_roles = tmp_path / "roles.jsonl"
    wrong_roles.write_text(json.dumps([good[1], good[0]]) + "\n")
    with pytest.raises(TaskDataError, match=r"roles\.jsonl:1: message 0 has role 'assistant'"):
        CustomJSON(str(wrong_roles))

    missing_content = tmp_path / "nocontent.jsonl"
    missing_content.write_text(json.dumps([{"role": "user"}, good[1]]) + "\n")
    with pytest.raises(TaskDataError, match=r"nocontent\.jsonl:1: message 0 needs 'role' and 'content'"):
        CustomJSON(str(missing_content))

    empty = CustomJSON(str(tmp_path / "absent.jsonl"))
    assert len(empty) == 0 and "curl -L -o" in capsys.readouterr().out


def test_row_with_missing_field_is_a_clear_error(tmp_path, monkeypatch):
    """A pack whose GSM8K/ARC rows lack a field: the error names the task, row and field."""
    pack = tmp_path / "pack"
    (pack / "gsm8k").mkdir(parents=True)
    (pack / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?"}) + "\n")
    (pack / "arc" / "ARC-Easy").mkdir(parents=True)
    row = {"id": "x", "question": "Q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}
    (pack / "arc" / "ARC-Easy" / "test.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("NANOCHAT_DATA_PACK", str(pack))
    from tasks.arc import ARC
    from tasks.gsm8k import GSM8K
    with pytest.raises(TaskDataError, match=r"GSM8K main/test row 0: row is missing field\(s\) \['answer'\]"):
        GSM8K("main", "test")[0]
    with pytest.raises(TaskDataError, match=r"ARC ARC-Easy/test row 0: row is missing field\(s\) \['answerKey'\]"):
        ARC("ARC-Easy", "test")[0]
    from tasks.sources import DatasetUnavailable
    from tasks.mmlu import MMLU
    with pytest.raises(DatasetUnavailable, match="has no file for cais/mmlu"):
        MMLU("all", "test")


def test_offline_without_pack_fails_fast(monkeypatch):
    import time
    import tasks.sources as sources
    monkeypatch.delenv("NANOCHAT_DATA_PACK", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from silent_host import silent_host
    with silent_host() as url:  # the hub host answers nothing: the real reachability check must time out
        monkeypatch.setattr(sources, "HF_HOST", url)
        start = time.time()
        with pytest.raises(sources.DatasetUnavailable, match="NANOCHAT_DATA_PACK"):
            sources.load_task_dataset("openai/gsm8k", "main", "test")
        assert time.time() - start < 6  # its 3 s timeout, not minutes of retries


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_in_the_sandbox(data_pack):
    from tasks.humaneval import HumanEval
    task = HumanEval()
    failures = [i for i in range(len(task)) if not task.evaluate(task[i], task[i]["messages"][-1]["content"])]
    assert failures == []
