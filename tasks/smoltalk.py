"""SmolTalk (smol-smoltalk): general chat conversations for SFT/midtraining. Not evaluated."""

from tasks.common import DatasetTask, TaskDataError


def check_messages(messages, where):
    """Optional leading system message, then >= 2 messages alternating user/assistant, string contents."""
    if not isinstance(messages, list) or not messages:
        raise TaskDataError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TaskDataError(f"{where}: message {i} needs 'role' and 'content', got {message!r:.120}")
        if not isinstance(message["content"], str):
            raise TaskDataError(f"{where}: message {i} content must be a string")
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    if len(rest) < 2:
        raise TaskDataError(f"{where}: a conversation needs at least one user and one assistant message")
    for i, message in enumerate(rest):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise TaskDataError(f"{where}: message {i} has role {message['role']!r}, expected {expected!r}")


class SmolTalk(DatasetTask):

    def __init__(self, split, **kwargs):
        assert split in ("train", "test"), f"SmolTalk split must be train|test, got {split!r}"
        self.split = split
        super().__init__("HuggingFaceTB/smol-smoltalk", None, split, **kwargs)

    def get_example(self, index):
        row = self.ds[index]
        if "messages" not in row or row["messages"] is None:
            raise TaskDataError(f"SmolTalk {self.split} row {index}: row is missing field 'messages'")
        check_messages(row["messages"], f"SmolTalk {self.split} row {index}")
        return {"messages": row["messages"]}
