"""GSM8K: grade-school math word problems with calculator annotations, scored on the final number."""

import re

from tasks.common import Task, TaskDataError, require_fields
from tasks.sources import load_task_dataset

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
CALC_RE = re.compile(r"(<<[^>]+>>)")


def final_answer_matches(conversation, assistant_response):
    """1 if the response's '#### <answer>' equals the one ending the reference reply, else 0."""
    content = conversation["messages"][-1]["content"]
    last_text = content[-1]["text"] if isinstance(content, list) else content
    reference = extract_answer(last_text)
    predicted = extract_answer(assistant_response)
    return int(predicted is not None and predicted == reference)


def extract_answer(completion):
    """The number after '#### ', commas removed; None when there is none."""
    match = ANSWER_RE.search(completion)
    if match is None:
        return None
    return match.group(1).strip().replace(",", "")


def parse_answer_parts(answer):
    """Split a GSM8K solution into text / python / python_output parts at its <<expr=result>> annotations."""
    parts = []
    for piece in CALC_RE.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            inner = piece[2:-2]
            expr, result = inner.rsplit("=", 1) if "=" in inner else (inner, "")
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        else:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(Task):

    def __init__(self, subset, split, **kwargs):
        super().__init__(**kwargs)
        assert subset in ("main", "socratic"), f"GSM8K subset must be main|socratic, got {subset!r}"
        assert split in ("train", "test"), f"GSM8K split must be train|test, got {split!r}"
        self.subset, self.split = subset, split
        self.ds = load_task_dataset("openai/gsm8k", subset, split)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        where = f"GSM8K {self.subset}/{self.split} row {index}"
        require_fields(row, ("question", "answer"), where)
        if extract_answer(row["answer"]) is None:
            raise TaskDataError(f"{where}: answer has no '#### <number>' line: {row['answer'][-80:]!r}")
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": parse_answer_parts(row["answer"])},
        ]
        return {"messages": messages}

    def evaluate(self, conversation, assistant_response):
        """1 if the response's '#### <number>' equals the reference answer, else 0."""
        assert isinstance(assistant_response, str), "GSM8K evaluates a string completion"
        return final_answer_matches(conversation, assistant_response)

    def reward(self, conversation, assistant_response):
        return float(self.evaluate(conversation, assistant_response))
