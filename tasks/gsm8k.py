"""GSM8K: grade-school math word problems with calculator annotations, scored on the final number."""

import re

from tasks.common import DatasetTask, TaskDataError, require_fields

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
CALC_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(completion):
    """The number after '#### ', commas removed; None when there is none."""
    match = ANSWER_RE.search(completion)
    return match.group(1).strip().replace(",", "") if match else None


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


class FinalAnswerScoring:
    """Mixed into generative tasks (GSM8K, SpellingBee) scored on the final '#### <number>' of the reply."""

    eval_type = "generative"

    def evaluate(self, conversation, assistant_response):
        """1 if the response's '#### <answer>' equals the one ending the reference reply, else 0."""
        assert isinstance(assistant_response, str), f"{type(self).__name__} evaluates a string completion"
        content = conversation["messages"][-1]["content"]
        reference = extract_answer(content[-1]["text"] if isinstance(content, list) else content)
        predicted = extract_answer(assistant_response)
        return int(predicted is not None and predicted == reference)

    def reward(self, conversation, assistant_response):
        return float(self.evaluate(conversation, assistant_response))


class GSM8K(FinalAnswerScoring, DatasetTask):

    def __init__(self, subset, split, **kwargs):
        assert subset in ("main", "socratic"), f"GSM8K subset must be main|socratic, got {subset!r}"
        assert split in ("train", "test"), f"GSM8K split must be train|test, got {split!r}"
        self.subset, self.split = subset, split
        super().__init__("openai/gsm8k", subset, split, **kwargs)

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
