"""ARC (AI2 Reasoning Challenge): grade-school science multiple choice, Easy and Challenge sets."""

from tasks.common import Task, TaskDataError, render_mc, require_fields
from tasks.sources import load_task_dataset


class ARC(Task):

    def __init__(self, subset, split, **kwargs):
        super().__init__(**kwargs)
        assert subset in ("ARC-Easy", "ARC-Challenge"), f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}"
        assert split in ("train", "validation", "test"), f"ARC split must be train|validation|test, got {split!r}"
        self.subset, self.split = subset, split
        self.ds = load_task_dataset("allenai/ai2_arc", subset, split)

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        where = f"ARC {self.subset}/{self.split} row {index}"
        require_fields(row, ("question", "choices", "answerKey"), where)
        choices = row["choices"]
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise TaskDataError(f"{where}: 'choices' must be a dict with 'text' and 'label', got {choices!r}")
        letters = choices["label"]
        if row["answerKey"] not in letters:
            raise TaskDataError(f"{where}: answerKey {row['answerKey']!r} is not one of the labels {letters}")
        messages = [
            {"role": "user", "content": render_mc(row["question"], letters, choices["text"])},
            {"role": "assistant", "content": row["answerKey"]},
        ]
        return {"messages": messages, "letters": letters}

    def evaluate(self, conversation, assistant_response):
        # categorical eval only ever picks one of the letters, so anything else is a caller bug
        assert assistant_response in conversation["letters"], \
            f"ARC answer {assistant_response!r} must be one of {conversation['letters']}"
        return assistant_response == conversation["messages"][-1]["content"]
