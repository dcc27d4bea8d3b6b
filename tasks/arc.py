"""ARC (AI2 Reasoning Challenge): grade-school science multiple choice, Easy and Challenge sets."""

from tasks.common import MultipleChoiceTask, TaskDataError, render_mc, require_fields


class ARC(MultipleChoiceTask):

    def __init__(self, subset, split, **kwargs):
        assert subset in ("ARC-Easy", "ARC-Challenge"), f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}"
        assert split in ("train", "validation", "test"), f"ARC split must be train|validation|test, got {split!r}"
        self.subset, self.split = subset, split
        super().__init__("allenai/ai2_arc", subset, split, **kwargs)

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
