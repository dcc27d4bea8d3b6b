"""
Conversations from a local JSONL file: each non-empty line is a JSON array of messages,
e.g. [{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}].
"""

import json
import os

from tasks.common import Task, TaskDataError
from tasks.smoltalk import check_messages

IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"


class CustomJSON(Task):
    """A malformed line raises TaskDataError naming the file and line (bad data should not train silently)."""

    def __init__(self, filepath, **kwargs):
        super().__init__(**kwargs)
        self.filepath = filepath
        self.conversations = []
        if not os.path.exists(filepath):
            print("-" * 80)
            print(f"Warning: {filepath} does not exist; CustomJSON is an empty task.")
            print("To get the identity conversations nanochat uses, run:")
            print(f"  curl -L -o {filepath} {IDENTITY_URL}")
            print("-" * 80)
            return
        with open(filepath, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                where = f"{filepath}:{line_no}"
                try:
                    messages = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                                        "fix or delete that line") from None
                if not isinstance(messages, list):
                    raise TaskDataError(f"{where}: each line must be a JSON array of messages, "
                                        f"got {type(messages).__name__}")
                if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
                    raise TaskDataError(f"{where}: CustomJSON conversations start with a user message")
                check_messages(messages, where)
                self.conversations.append(messages)

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return {"messages": self.conversations[index]}
