"""The terminal chat: visible text only, conversation bookkeeping, commands, missing checkpoints."""

import os

import pytest

from scripts.chat_cli import chat, main


class ScriptedEngine:
    """Replays fixed replies (token ids) one per turn, like Engine.generate with num_samples=1."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        self.prompts.append(list(tokens))
        reply = self.replies.pop(0)
        for token in reply[:max_tokens]:
            yield [token], [1]


def run(engine, tokenizer, lines, **kwargs):
    out = []
    inputs = iter(lines)

    def read(_prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    conversation = chat(engine, tokenizer, read=read, write=out.append, **kwargs)
    return "".join(out), conversation


def test_only_visible_text_is_printed(byte_tokenizer):
    tok = byte_tokenizer
    special = tok.encode_special
    reply = tok.encode("It is ") + [special("<|python_start|>")] + tok.encode("6*7") + [special("<|python_end|>"),
             special("<|output_start|>")] + tok.encode("42") + [special("<|output_end|>")] + tok.encode(" — done.")
    reply += [special("<|assistant_end|>")] + tok.encode("never shown")
    text, conversation = run(ScriptedEngine([reply]), tok, ["what is 6*7?"])
    assert "Assistant: It is [calculator: 6*7] = 42 — done.\n" in text
    assert "<|" not in text and "never shown" not in text
    # the conversation keeps the real tokens, and the turn ends exactly at <|assistant_end|>
    assert conversation[-1] == special("<|assistant_end|>")
    assert conversation[0] == tok.get_bos_token_id() and special("<|python_start|>") in conversation


def test_turns_accumulate_and_clear_resets(byte_tokenizer):
    tok = byte_tokenizer
    special = tok.encode_special
    end = special("<|assistant_end|>")
    engine = ScriptedEngine([tok.encode("one") + [end], tok.encode("two") + [end], tok.encode("three") + [end]])
    text, _ = run(engine, tok, ["first", "", "second", "clear", "third", "quit", "not read"])
    first, second, third = engine.prompts
    assert second[:len(first)] == first and second[len(first):len(first) + 4] == tok.encode("one") + [end]
    assert third == [tok.get_bos_token_id(), special("<|user_start|>"), *tok.encode("third"),
                     special("<|user_end|>"), special("<|assistant_start|>")]
    assert "Conversation cleared." in text and text.rstrip().endswith("Goodbye!")


def test_reply_cut_by_the_length_limit_is_closed(byte_tokenizer):
    tok = byte_tokenizer
    engine = ScriptedEngine([tok.encode("x" * 300)])  # longer than the 256-token reply limit
    _, conversation = run(engine, tok, [], prompt="go on")
    assert conversation[-1] == tok.encode_special("<|assistant_end|>")
    assert conversation.count(ord("x")) == 256


def test_one_shot_prompt_answers_once(byte_tokenizer):
    tok = byte_tokenizer
    engine = ScriptedEngine([tok.encode("hello") + [tok.encode_special("<|assistant_end|>")]])
    text, _ = run(engine, tok, ["should not be read"], prompt="hi")
    assert len(engine.prompts) == 1 and "Assistant: hello" in text and "interactive" not in text


def test_missing_checkpoint_says_where_and_which_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["--device-type=cpu", "-p", "hi"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path), "chatsft_checkpoints") in err and "scripts.chat_sft" in err


def save_tiny_checkpoint(base_dir, tokenizer, subdir="chatsft_checkpoints"):
    """A depth-2 random model saved the way the training stages save theirs, plus its tokenizer."""
    from dataclasses import asdict

    import torch

    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.tokenizer import save_token_bytes
    tokenizer_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tokenizer_dir)
    save_token_bytes(tokenizer, tokenizer_dir)
    torch.manual_seed(0)
    config = config_for_depth(2, 128, tokenizer.get_vocab_size())
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    save_checkpoint(os.path.join(base_dir, subdir, "d2"), 5, model.state_dict(), None,
                    {"step": 5, "model_config": asdict(config)})


def test_one_shot_with_a_real_checkpoint(base_dir, byte_tokenizer, capsys):
    save_tiny_checkpoint(base_dir, byte_tokenizer)
    main(["--device-type=cpu", "-p", "Hello", "-t", "0.0"])
    out = capsys.readouterr().out
    assert "Assistant: " in out and "<|" not in out
