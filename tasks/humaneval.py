"""HumanEval: write a Python function from its docstring; the unit tests call it in a sandbox."""

import re

from nanochat.execution import execute_code
from tasks.common import DatasetTask, require_fields

FENCE_RE = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def extract_imports(prompt):
    """The import lines at the top of the prompt (blank and comment lines skipped)."""
    imports = []
    for line in prompt.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(completion):
    """The first fenced code block if there is one, else the whole completion."""
    match = FENCE_RE.search(completion)
    return (match.group(1) if match else completion).strip()


class HumanEval(DatasetTask):

    eval_type = "generative"

    def __init__(self, **kwargs):
        super().__init__("openai/openai_humaneval", None, "test", **kwargs)

    def get_example(self, index):
        row = self.ds[index]
        require_fields(row, ("prompt", "canonical_solution", "entry_point", "test"), f"HumanEval row {index}")
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"},
        ]
        return {"messages": messages, "entry_point": row["entry_point"], "test": row["test"]}

    def evaluate(self, conversation, completion):
        prompt, entry_point = conversation["messages"][0]["content"], conversation["entry_point"]
        program = extract_imports(prompt) + "\n\n" + extract_program(completion)

        def judge(functions):
            # the dataset's prompt (helpers such as poly) and tests are trusted and run here; only
            # the candidate runs in the sandbox, so the program cannot reach the verdict
            namespace = {}
            exec(prompt + "\n\n" + conversation["test"], namespace)
            namespace[entry_point] = functions[entry_point]
            namespace["check"](namespace[entry_point])

        return execute_code(program, judge=judge).success
