"""dev.gen_synthetic_data: the offline identity generator and its output file."""

import json
import os

import pytest

from dev import gen_synthetic_data as gen


def test_offline_run_writes_valid_varied_conversations(base_dir, monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    path = gen.main(["--offline"])
    assert path == os.path.join(base_dir, "identity_conversations.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1000
    conversations = [json.loads(line) for line in lines]
    for messages in conversations:
        gen.validate_messages(messages)
    assert len({json.dumps(m) for m in conversations}) > 900
    text = " ".join(m["content"] for c in conversations for m in c)
    for fact in ("nanochat", "MIT", "Transformer", "H100", "English", "Karpathy"):
        assert fact in text
    assert sum(not c[0]["content"].isascii() for c in conversations) > 50  # multilingual greetings
    assert not os.path.exists(path + ".tmp")


def test_generator_is_deterministic():
    assert gen.offline_conversation(7) == gen.offline_conversation(7)
    assert gen.offline_conversation(7) != gen.offline_conversation(8)


def test_customjson_reads_the_output(base_dir):
    from tasks.customjson import CustomJSON
    path = gen.main(["--offline", "--num=20"])
    task = CustomJSON(path)
    assert len(task) == 20 and task[0]["messages"][0]["role"] == "user"


def test_validation_rejects_bad_conversations():
    with pytest.raises(ValueError, match="role"):
        gen.validate_messages([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}])
    with pytest.raises(ValueError, match="non-empty"):
        gen.validate_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}])


def test_api_key_from_env_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    assert gen.read_api_key(str(tmp_path)) is None
    (tmp_path / "openroutertoken.txt").write_text("sk-file\n")
    assert gen.read_api_key(str(tmp_path)) == "sk-file"
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-env")
    assert gen.read_api_key(str(tmp_path)) == "sk-env"
