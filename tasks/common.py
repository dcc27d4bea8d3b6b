"""
The Task interface every dataset speaks (a sliceable view producing conversations), the bases
of dataset and multiple-choice tasks, mixing/sequencing of tasks and the shared multiple-choice prompt.
"""

import math
import random

from tasks.sources import load_task_dataset


class TaskDataError(ValueError):
    """A dataset row does not have the shape its task expects."""


class Task:
    """A lightweight view over an underlying dataset: examples start, start+step, ... < stop."""

    def __init__(self, start=0, stop=None, step=1):
        assert start >= 0, f"Start must be non-negative, got {start}"
        assert stop is None or stop >= start, f"Stop should be greater than or equal to start, got {stop} and {start}"
        assert step >= 1, f"Step must be strictly positive, got {step}"
        self.start, self.stop, self.step = start, stop, step

    @property
    def eval_type(self):
        """'generative' (sample a completion) or 'categorical' (pick among letters)."""
        raise NotImplementedError

    def num_examples(self):
        raise NotImplementedError

    def get_example(self, index):
        raise NotImplementedError

    def evaluate(self, problem, completion):
        raise NotImplementedError

    def __len__(self):
        stop = self.num_examples() if self.stop is None else self.stop
        return max(0, math.ceil((stop - self.start) / self.step))

    def __getitem__(self, index):
        assert isinstance(index, int), f"Index must be an integer, got {type(index)}"
        return self.get_example(self.start + index * self.step)


class DatasetTask(Task):
    """A Task whose examples are the rows of a dataset loaded (and shuffled) by tasks.sources."""

    def __init__(self, hf_path, config, split, **kwargs):
        super().__init__(**kwargs)
        self.ds = load_task_dataset(hf_path, config, split)

    def num_examples(self):
        return len(self.ds)


class MultipleChoiceTask(DatasetTask):
    """ARC and MMLU: the conversation carries its `letters`, the reference reply is the right one."""

    eval_type = "categorical"

    def evaluate(self, conversation, assistant_response):
        # categorical eval only ever picks one of the letters, so anything else is a caller bug
        assert assistant_response in conversation["letters"], \
            f"{type(self).__name__} answer {assistant_response!r} must be one of {conversation['letters']}"
        return assistant_response == conversation["messages"][-1]["content"]


class TaskSequence(Task):
    """Tasks one after the other, in order (a curriculum)."""

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.lengths = [len(task) for task in tasks]
        self.num_conversations = sum(self.lengths)

    def num_examples(self):
        return self.num_conversations

    def get_example(self, index):
        assert 0 <= index < self.num_conversations, \
            f"Index {index} out of range for sequence with {self.num_conversations} conversations"
        for task, length in zip(self.tasks, self.lengths):
            if index < length:
                return task[index]
            index -= length


class TaskMixture(TaskSequence):
    """All examples of several tasks, shuffled together once (seed 42). Listing a task twice oversamples it."""

    def __init__(self, tasks, **kwargs):
        super().__init__(tasks, **kwargs)
        self.index_map = [(t, i) for t, n in enumerate(self.lengths) for i in range(n)]
        random.Random(42).shuffle(self.index_map)

    def get_example(self, index):
        assert 0 <= index < self.num_conversations, \
            f"Index {index} out of range for mixture with {self.num_conversations} conversations"
        task_idx, local_idx = self.index_map[index]
        return self.tasks[task_idx][local_idx]


def render_mc(question, letters, choices):
    """
    The multiple-choice prompt shared by ARC and MMLU. The letter comes after its choice with no
    space around '=' so the letter token here is the same token as the bare-letter answer.
    """
    choice_lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    return f"Multiple Choice question: {question}\n{choice_lines}\nRespond only with the letter of the correct answer."


def require_fields(row, fields, where):
    """Raise TaskDataError naming the row and the missing fields, so bad data is found fast."""
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise TaskDataError(f"{where}: row is missing field(s) {missing}; has {sorted(row)}")
