"""RustBPETokenizer (tiktoken side), chat rendering and masks, token byte lengths."""

import os

import pytest

from nanochat.tokenizer import (SPECIAL_TOKENS, RustBPETokenizer, TokenizerError, get_token_bytes,
                                get_tokenizer, save_token_bytes)

ROUND_TRIP_TEXTS = [
    "Hello world! How are you? 🙃",
    "你好世界，这是一个测试。日本語のテキストも。한국어도.",
    "emoji: 👩‍👩‍👧‍👦 🏳️‍🌈 🍕🍕🍕",
    "def f(x):\n\treturn x ** 2  # square\n\n\n    indented",
    "   leading and    inner     whitespace runs   \n\n\r\n\t\t",
    "<|bos|> special-looking text is ordinary",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(byte_tokenizer, text):
    assert byte_tokenizer.decode(byte_tokenizer.encode(text)) == text


def test_special_tokens_get_the_last_ids(byte_tokenizer):
    tok = byte_tokenizer
    assert tok.get_vocab_size() == 256 + len(SPECIAL_TOKENS)
    ids = [tok.encode_special(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert tok.get_bos_token_id() == 256
    # special-token strings inside text are encoded as ordinary bytes, never as the special id
    assert 256 not in tok.encode("<|bos|>")
    assert tok.id_to_token(ord("a")) == "a" and tok.id_to_token(256) == "<|bos|>"


def test_unknown_special_token_is_a_clear_error(byte_tokenizer):
    with pytest.raises(TokenizerError, match="unknown special token"):
        byte_tokenizer.encode_special("<|nope|>")
    with pytest.raises(TokenizerError):
        byte_tokenizer.encode("hi", prepend="<|nope|>")


def test_encode_batch_prepend_append(byte_tokenizer):
    tok = byte_tokenizer
    bos = tok.get_bos_token_id()
    single = tok.encode("abc")
    assert tok.encode(["abc", "abc"]) == [single, single]
    assert tok.encode("abc", prepend="<|bos|>", append=bos) == [bos] + single + [bos]
    assert tok.encode(["abc"], prepend=bos) == [[bos] + single]
    with pytest.raises(ValueError):
        tok.encode(123)


def test_save_and_load(byte_tokenizer, base_dir):
    tok_dir = os.path.join(base_dir, "tokenizer")
    byte_tokenizer.save(tok_dir)
    loaded = get_tokenizer()
    assert loaded.encode("round trip ✓") == byte_tokenizer.encode("round trip ✓")


def test_missing_tokenizer_says_how_to_train(base_dir):
    with pytest.raises(FileNotFoundError, match="scripts.tok_train"):
        get_tokenizer()
    with pytest.raises(FileNotFoundError, match="tok_train"):
        get_token_bytes()


def test_token_bytes_are_true_byte_lengths(base_dir):
    import tiktoken
    # ranks include lone UTF-8 continuation bytes and a merged multi-byte token
    ranks = {bytes([i]): i for i in range(256)}
    ranks["é".encode()] = 256  # 2 bytes
    ranks["€".encode()] = 257  # 3 bytes
    specials = {name: 258 + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="t", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens=specials)
    tok = RustBPETokenizer(enc, "<|bos|>")
    tok_dir = os.path.join(base_dir, "tokenizer")
    tok.save(tok_dir)
    save_token_bytes(tok, tok_dir)
    token_bytes = get_token_bytes()
    assert token_bytes.dtype.is_floating_point is False and token_bytes.shape[0] == tok.get_vocab_size()
    assert token_bytes[0x80].item() == 1  # a lone continuation byte is 1 byte, not 3 (U+FFFD)
    assert token_bytes[256].item() == 2 and token_bytes[257].item() == 3
    assert all(token_bytes[258 + i].item() == 0 for i in range(len(SPECIAL_TOKENS)))


def test_vocab_size_below_minimum_is_refused():
    with pytest.raises(TokenizerError, match="at least 265"):
        RustBPETokenizer.train_from_iterator(iter(["some text"]), 200)


# -----------------------------------------------------------------------------
# chat rendering

def _segments(tok, ids, mask):
    """Decode runs of equal mask value, to compare against a readable expectation."""
    out, cur, cur_mask = [], [], None
    for i, m in zip(ids, mask):
        if cur_mask is not None and m != cur_mask:
            out.append((tok.decode(cur), cur_mask))
            cur = []
        cur.append(i)
        cur_mask = m
    if cur:
        out.append((tok.decode(cur), cur_mask))
    return out


def test_render_conversation_masks_tool_use(byte_tokenizer):
    tok = byte_tokenizer
    conversation = {"messages": [
        {"role": "user", "content": "What is 12/60?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "python", "text": "12/60"},
            {"type": "python_output", "text": "0.2"},
            {"type": "text", "text": "It is 0.2.\n#### 0.2"},
        ]},
    ]}
    ids, mask = tok.render_conversation(conversation)
    assert len(ids) == len(mask)
    assert _segments(tok, ids, mask) == [
        ("<|bos|><|user_start|>What is 12/60?<|user_end|><|assistant_start|>", 0),
        ("Let me compute. <|python_start|>12/60<|python_end|>", 1),
        ("<|output_start|>0.2<|output_end|>", 0),
        ("It is 0.2.\n#### 0.2<|assistant_end|>", 1),
    ]


def test_render_conversation_system_message_and_multi_turn(byte_tokenizer):
    tok = byte_tokenizer
    conversation = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]}
    ids, mask = tok.render_conversation(conversation)
    assert _segments(tok, ids, mask) == [
        ("<|bos|><|user_start|>Be brief.\n\nHi<|user_end|><|assistant_start|>", 0),
        ("Hello<|assistant_end|>", 1),
        ("<|user_start|>Bye<|user_end|>", 0),
    ]
    assert conversation["messages"][0]["role"] == "system"  # the input is not mutated


def test_render_conversation_truncates(byte_tokenizer):
    # the cut falls inside the assistant's reply: the kept tokens are the conversation's first ones, mask and all
    conversation = {"messages": [{"role": "user", "content": "x" * 5}, {"role": "assistant", "content": "y" * 50}]}
    full_ids, full_mask = byte_tokenizer.render_conversation(conversation, max_tokens=1000)
    ids, mask = byte_tokenizer.render_conversation(conversation, max_tokens=20)
    assert (ids, mask) == (full_ids[:20], full_mask[:20])
    assert len(full_ids) > 20 and 0 in mask and 1 in mask
    assert byte_tokenizer.decode(ids) == "<|bos|><|user_start|>xxxxx<|user_end|><|assistant_start|>" + "y" * 11


@pytest.mark.parametrize("messages, match", [
    ([], "no messages"),
    ([{"role": "assistant", "content": "hi"}], "expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected 'assistant'"),
    ([{"role": "user", "content": ["not", "a", "string"]}], "must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown assistant part type"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}], "unknown assistant content"),
])
def test_render_conversation_rejects_malformed(byte_tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        byte_tokenizer.render_conversation({"messages": messages})


def test_render_for_completion(byte_tokenizer):
    tok = byte_tokenizer
    conversation = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    ids = tok.render_for_completion(conversation)
    assert tok.decode(ids) == "<|bos|><|user_start|>2+2?<|user_end|><|assistant_start|>"
    assert len(conversation["messages"]) == 2
    with pytest.raises(ValueError, match="last message"):
        tok.render_for_completion({"messages": [{"role": "user", "content": "x"}]})


def test_visualize_tokenization(byte_tokenizer):
    ids, mask = byte_tokenizer.render_conversation(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    text = byte_tokenizer.visualize_tokenization(ids, mask, with_token_id=True)
    assert "\033[92mb\033[0m" in text and "\033[91ma\033[0m" in text and "(98)" in text
    assert text.count("\033[0m|") == len(ids) - 1  # one separator between consecutive tokens


def test_hf_tokenizer_from_local_directory(tmp_path):
    from nanochat.tokenizer import HuggingFaceTokenizer
    texts = ["hello world, hello tokenizer"] * 20
    trained = HuggingFaceTokenizer.train_from_iterator(iter(texts), 300)
    trained.save(str(tmp_path))
    loaded = HuggingFaceTokenizer.from_pretrained(str(tmp_path))  # a folder, not a Hub id
    assert loaded.encode("hello world") == trained.encode("hello world")
    assert HuggingFaceTokenizer.from_directory(str(tmp_path)).encode("hello") == trained.encode("hello")
    assert loaded.id_to_token(loaded.encode_special("<|bos|>")) == "<|bos|>"
    assert loaded.get_bos_token_id() == loaded.encode_special("<|bos|>")


def test_hf_tokenizer_never_makes_special_tokens_from_text(tmp_path):
    """'hi<|assistant_start|>' is ordinary text for the HF class too (trained or loaded from disk)."""
    from nanochat.tokenizer import SPECIAL_TOKENS, HuggingFaceTokenizer
    trained = HuggingFaceTokenizer.train_from_iterator(iter(["hello world, hi there"] * 20), 300)
    trained.save(str(tmp_path))
    for tok in (trained, HuggingFaceTokenizer.from_pretrained(str(tmp_path))):
        specials = {tok.encode_special(s) for s in SPECIAL_TOKENS}
        text = "hi<|assistant_start|>" + "".join(SPECIAL_TOKENS)
        ids = tok.encode(text)
        assert not specials & set(ids)
        assert tok.decode(ids) == text
        assert tok.encode("hi", prepend="<|bos|>")[0] == tok.get_bos_token_id()  # specials still placed on purpose
