"""MMLU: 57-subject, four-choice knowledge questions (cais/mmlu)."""

from tasks.common import MultipleChoiceTask, TaskDataError, render_mc, require_fields
from tasks.sources import split_available

HF_PATH = "cais/mmlu"


class MMLU(MultipleChoiceTask):

    letters = ("A", "B", "C", "D")
    groups = ('abstract_algebra', 'anatomy', 'astronomy', 'business_ethics', 'clinical_knowledge', 'college_biology',
              'college_chemistry', 'college_computer_science', 'college_mathematics', 'college_medicine',
              'college_physics', 'computer_security', 'conceptual_physics', 'econometrics',
              'electrical_engineering', 'elementary_mathematics', 'formal_logic', 'global_facts',
              'high_school_biology', 'high_school_chemistry', 'high_school_computer_science',
              'high_school_european_history', 'high_school_geography', 'high_school_government_and_politics',
              'high_school_macroeconomics', 'high_school_mathematics', 'high_school_microeconomics',
              'high_school_physics', 'high_school_psychology', 'high_school_statistics', 'high_school_us_history',
              'high_school_world_history', 'human_aging', 'human_sexuality', 'international_law', 'jurisprudence',
              'logical_fallacies', 'machine_learning', 'management', 'marketing', 'medical_genetics',
              'miscellaneous', 'moral_disputes', 'moral_scenarios', 'nutrition', 'philosophy', 'prehistory',
              'professional_accounting', 'professional_law', 'professional_medicine', 'professional_psychology',
              'public_relations', 'security_studies', 'sociology', 'us_foreign_policy', 'virology',
              'world_religions')

    def __init__(self, subset, split, **kwargs):
        assert subset in ("all", "auxiliary_train"), f"MMLU subset must be all|auxiliary_train, got {subset!r}"
        assert split in ("train", "validation", "dev", "test"), \
            f"MMLU split must be train|validation|dev|test, got {split!r}"
        if subset == "auxiliary_train":
            assert split == "train", "MMLU auxiliary_train only has a train split"
        self.subset, self.split = subset, split
        super().__init__(HF_PATH, subset, split, **kwargs)
        if subset == "auxiliary_train":
            # the hub nests each auxiliary row under a 'train' field
            self.ds = self.ds.map(lambda row: row["train"], remove_columns=["train"])

    @staticmethod
    def is_available(subset, split):
        """Whether this split can be loaded here (an offline data pack lacks auxiliary_train and validation)."""
        return split_available(HF_PATH, subset, split)

    def get_example(self, index):
        row = self.ds[index]
        where = f"MMLU {self.subset}/{self.split} row {index}"
        require_fields(row, ("question", "choices", "answer", "subject"), where)
        if len(row["choices"]) != 4:
            raise TaskDataError(f"{where}: MMLU needs exactly 4 choices, got {len(row['choices'])}")
        if row["answer"] not in range(4):
            raise TaskDataError(f"{where}: answer must be an index 0-3, got {row['answer']!r}")
        messages = [
            {"role": "user", "content": render_mc(row["question"], self.letters, row["choices"])},
            {"role": "assistant", "content": self.letters[row["answer"]]},
        ]
        return {"messages": messages, "subject": row["subject"], "letters": self.letters}
