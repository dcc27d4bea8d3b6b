"""Tests for the `rustbpe` extension (BPE training in Rust).

- merges equal those of a naive Python BPE trainer, on several texts, vocab
  sizes and both split patterns (GPT-4's and nanochat's);
- the hand-written splitter equals fancy-regex's splitting;
- `encode` equals tiktoken built from the exported ranks;
- bad input raises a clear Python exception; training releases the GIL.
"""

import gzip
import json
import logging
import os
import random
import threading
import time
from collections import Counter

import pytest
import regex as re
import tiktoken

import rustbpe

GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501
NANOCHAT_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501
# The GPT-4 pattern spelled differently: same language, but not recognised by
# the hand-written matcher, so rustbpe runs it with fancy-regex.
GPT4_SPELLED_DIFFERENTLY = GPT4_SPLIT_PATTERN.replace(r"\p{N}{1,3}", r"(?:\p{N}{1,3})")


def test_this_is_the_repository_extension():
    # The PyPI package of the same name installed into the environment would
    # shadow ours (its version-specific .so is preferred over our abi3 one).
    assert hasattr(rustbpe.Tokenizer, "_split"), (
        f"imported {rustbpe.__file__}, which is not this repository's rustbpe: "
        "uninstall the PyPI 'rustbpe' package and rebuild with maturin"
    )


# --------------------------------------------------------------------------------------
# Naive reference trainer


def merge(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair`, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_vocab(texts, vocab_size, pattern):
    """Naive byte-level BPE: count all adjacent pairs over the chunk multiset,
    merge the most frequent (ties: the smallest pair) everywhere, repeat.
    Returns the bytes of every token, indexed by id."""
    chunks = Counter(chunk for text in texts for chunk in re.findall(pattern, text))
    words = [(list(chunk.encode("utf-8")), n) for chunk, n in chunks.items()]
    vocab = [bytes([i]) for i in range(256)]
    while len(vocab) < vocab_size:
        stats = Counter()
        for ids, n in words:
            for pair in zip(ids, ids[1:]):
                stats[pair] += n
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        new_id = len(vocab)
        words = [(merge(ids, pair, new_id), n) if len(ids) > 1 else (ids, n) for ids, n in words]
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
    return vocab


def trained(texts, vocab_size, pattern=None, **kwargs):
    tok = rustbpe.Tokenizer()
    if pattern is None:
        tok.train_from_iterator(iter(texts), vocab_size, **kwargs)
    else:
        tok.train_from_iterator(iter(texts), vocab_size, pattern=pattern, **kwargs)
    return tok


def vocab_of(tok):
    ranks = tok.get_mergeable_ranks()
    assert [rank for _, rank in ranks] == list(range(len(ranks)))
    return [bytes(k) for k, _ in ranks]


def tiktoken_of(tok):
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    return tiktoken.Encoding(name="rustbpe-test", pat_str=tok.get_pattern(), mergeable_ranks=ranks, special_tokens={})


# --------------------------------------------------------------------------------------
# Texts

ENGLISH_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged that we'll need more data.",
    "They're going to the market at 10:30, and I'd rather stay home.",
    "In 1969, 600 million people watched the landing; it cost $25,400,000,000.",
    "Don't count your chickens before they hatch!",
    "She said: \"Learning is never done without errors and defeat.\"",
    "HE'LL BE THERE BY 7PM -- WE'VE CONFIRMED IT TWICE.",
    "Whitespace   matters:\ttabs, double  spaces and\n\nblank lines.",
    "Numbers like 3.14159, 2718281828 and 42 show up everywhere.",
    "Can you believe it? Yes... no... maybe!!!",
]


def english_text(n_docs=40, seed=0):
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [rng.choice(ENGLISH_SENTENCES) for _ in range(rng.randint(3, 8))]
        docs.append(" ".join(sentences) + rng.choice(["\n", "\n\n", " ", ""]))
    return docs


MIXED_PIECES = [
    "我们今天去公园散步。", "東京は日本の首都です。", "안녕하세요 세계! ", "مرحبا بالعالم ",
    "नमस्ते दुनिया ", "Σίσυφος και İstanbul ", "naïve café résumé ", "cafe\u0301 ",
    "👩‍💻🎉🙃 emoji!! 🇯🇵 ", "def f(x):\n\tif x > 10:\n\t\treturn x**2  # square\n",
    "for (int i = 0; i < n; ++i) { s += a[i]; }\r\n", "   \n\n\t  \r\n", "\u00a0\u2003\u3000 ",
    "1234567 3.14159 ٣٤٥ Ⅷ ² ", "I'LL WE'VE they're ſ'ſ 'S 'd 'M 'T ", "x = [1,2,3]\n    y = {'a': 1}\n",
    "http://example.com/path?q=1&r=2 ", "\u200b\u200d\ufeff ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 ",
]


def mixed_text(n_docs=30, seed=1):
    rng = random.Random(seed)
    return ["".join(rng.choice(MIXED_PIECES) for _ in range(rng.randint(5, 15))) for _ in range(n_docs)]


def corpus_docs(max_bytes):
    """Documents from the data pack's corpus, or None when no data pack is configured."""
    pack = os.environ.get("NANOCHAT_DATA_PACK")
    path = os.path.join(pack, "corpus", "part_000.jsonl.gz") if pack else None
    if not path or not os.path.exists(path):
        return None
    docs, size = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            docs.append(text[: max_bytes - size])
            size += len(docs[-1].encode("utf-8"))
            if size >= max_bytes:
                break
    return docs


TEXTS = {
    "english": english_text,
    "mixed": mixed_text,
    "corpus": lambda: corpus_docs(12_000),
}


# --------------------------------------------------------------------------------------
# Merges equal the naive reference


@pytest.mark.parametrize(
    "text_name,vocab_size,pattern",
    [
        ("english", 256 + 150, None),
        ("english", 256 + 60, NANOCHAT_SPLIT_PATTERN),
        ("mixed", 256 + 200, None),
        ("mixed", 256 + 90, NANOCHAT_SPLIT_PATTERN),
        ("corpus", 256 + 80, None),
        ("corpus", 256 + 120, NANOCHAT_SPLIT_PATTERN),
    ],
)
def test_merges_match_naive_reference(text_name, vocab_size, pattern):
    texts = TEXTS[text_name]()
    if texts is None:
        pytest.skip("needs the data pack: set NANOCHAT_DATA_PACK to its folder")
    tok = trained(texts, vocab_size, pattern)
    expected = reference_vocab(texts, vocab_size, pattern or GPT4_SPLIT_PATTERN)
    assert vocab_of(tok) == expected
    assert tok.get_pattern() == (pattern or GPT4_SPLIT_PATTERN)


def test_ties_break_towards_the_smallest_pair():
    # Every pair occurs equally often, so each merge is decided by the tie-break.
    texts = ["ab cd ef gh ba dc fe hg " * 3, "zy xw vu ts " * 3]
    tok = trained(texts, 256 + 30)
    assert vocab_of(tok) == reference_vocab(texts, 256 + 30, GPT4_SPLIT_PATTERN)


def test_overlapping_runs_merge_left_to_right():
    texts = ["aaaaa aaa aaaaaaa abababab aaab", "abab" * 7, "a" * 33]
    tok = trained(texts, 256 + 20)
    assert vocab_of(tok) == reference_vocab(texts, 256 + 20, GPT4_SPLIT_PATTERN)


def test_batching_does_not_change_merges():
    docs = english_text(60, seed=3) + mixed_text(20, seed=4)
    whole = vocab_of(trained(docs, 256 + 100))
    assert vocab_of(trained(docs, 256 + 100, buffer_size=1)) == whole
    assert vocab_of(trained(docs, 256 + 100, buffer_size=7)) == whole


def test_large_document_fast_and_regex_paths_agree():
    # One document of ~0.6 MB: the fast path cuts it into pieces split in
    # parallel, the fancy-regex path splits it whole; merges must be equal.
    docs = corpus_docs(600_000) or english_text(1500, seed=5) + mixed_text(200, seed=6)
    text = "".join(docs)
    fast = vocab_of(trained([text], 256 + 300))
    slow = vocab_of(trained([text], 256 + 300, GPT4_SPELLED_DIFFERENTLY))
    assert fast == slow


def test_vocab_of_256_and_untrained_tokenizer():
    tok = rustbpe.Tokenizer()
    assert tok.get_pattern() == ""
    assert vocab_of(tok) == [bytes([i]) for i in range(256)]
    assert tok.encode("héllo") == list("héllo".encode("utf-8"))
    tok.train_from_iterator(["hello hello"], 256)
    assert vocab_of(tok) == [bytes([i]) for i in range(256)]


def test_stops_when_no_pairs_are_left():
    tok = trained(["abc abc"], 10_000)
    vocab = vocab_of(tok)
    assert vocab == reference_vocab(["abc abc"], 10_000, GPT4_SPLIT_PATTERN)
    assert len(vocab) < 10_000


# --------------------------------------------------------------------------------------
# Splitting


def code_point_text(code_points, seed=0):
    """Each given code point (surrogates skipped) in a random small context."""
    contexts = ["'{c}", "a{c}b", "1{c}2", " {c} ", "{c}{c}\n", "\n{c}x", "'{c}{c}", "{c} a", "{c}'ll", " {c}1"]
    rng = random.Random(seed)
    return "".join(rng.choice(contexts).format(c=chr(cp)) for cp in code_points if not 0xD800 <= cp < 0xE000)


SPLIT_SAMPLES = [
    "".join(mixed_text(200, seed=7)),
    "".join(english_text(200, seed=8)),
    "  \n \n\n  x\t\t\ny \r\n\r\n  \u00a0\u00a0z    ",
    " '' 's 'S 'ſ 'll 'LL 'Ll 've 're 'x ' ",
    "1234567890 ١٢٣٤٥٦ ⅠⅡⅢ ¹²³ ",
    "",
    " ",
    "\n",
    "'",
]


def assert_same_split(text, pattern):
    fast = rustbpe.Tokenizer._split(text, pattern, fast=True)
    slow = rustbpe.Tokenizer._split(text, pattern, fast=False)
    assert fast == slow
    assert "".join(fast) == text


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, NANOCHAT_SPLIT_PATTERN])
def test_fast_splitter_equals_fancy_regex(pattern):
    # The Basic Multilingual Plane in full (where nearly all assigned characters
    # are) and a sample of the other planes; the slow test below covers them all.
    code_points = list(range(0x10000)) + list(range(0x10000, 0x110000, 61))
    for text in SPLIT_SAMPLES + [code_point_text(code_points)]:
        assert_same_split(text, pattern)


@pytest.mark.slow
def test_fast_splitter_equals_fancy_regex_on_every_code_point():
    text = code_point_text(range(0x110000), seed=1)
    for pattern in (GPT4_SPLIT_PATTERN, NANOCHAT_SPLIT_PATTERN):
        assert_same_split(text, pattern)


def test_split_matches_python_regex_module():
    text = "".join(mixed_text(50, seed=9)) + "".join(english_text(50, seed=10))
    for pattern in (GPT4_SPLIT_PATTERN, NANOCHAT_SPLIT_PATTERN):
        assert rustbpe.Tokenizer._split(text, pattern) == re.findall(pattern, text)


def test_fast_splitter_rejects_other_patterns():
    with pytest.raises(ValueError):
        rustbpe.Tokenizer._split("abc", r"\w+", fast=True)
    assert rustbpe.Tokenizer._split("ab cd", r"\w+", fast=False) == ["ab", "cd"]


# --------------------------------------------------------------------------------------
# Encoding


ENCODE_SAMPLES = [
    "Hello world! How are you? 🙃",
    "plain ascii text, with punctuation; and 1234567 numbers.",
    "我们今天去公园散步。東京は日本の首都です。",
    "👩‍💻🎉🙃🇯🇵 emoji",
    "def f(x):\n\tif x > 10:\n\t\treturn x**2  # square\n",
    "   \n\n\t  \r\n    lots   of    whitespace       ",
    "unseen wörds: Zyxwvut qwerty ſſſ 'LL",
    "a" * 500 + " " + "ab" * 300,
    "",
]


@pytest.mark.parametrize("pattern", [None, NANOCHAT_SPLIT_PATTERN])
def test_encode_equals_tiktoken(pattern):
    tok = trained(english_text(30) + mixed_text(30), 256 + 400, pattern)
    enc = tiktoken_of(tok)
    for text in ENCODE_SAMPLES:
        ids = tok.encode(text)
        assert ids == enc.encode_ordinary(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")


# --------------------------------------------------------------------------------------
# Bad input


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no text was seen"):
        rustbpe.Tokenizer().train_from_iterator(iter([]), 300)
    with pytest.raises(ValueError, match="no text was seen"):
        rustbpe.Tokenizer().train_from_iterator(["", ""], 300)


@pytest.mark.parametrize("vocab_size", [255, 0, -1])
def test_vocab_size_below_256_is_an_error(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        rustbpe.Tokenizer().train_from_iterator(["hello"], vocab_size)


def test_bad_buffer_size_is_an_error():
    with pytest.raises(ValueError, match="buffer_size"):
        rustbpe.Tokenizer().train_from_iterator(["hello"], 300, buffer_size=0)


@pytest.mark.parametrize("items", [[b"bytes"], ["ok", 3], [None]])
def test_non_str_items_are_a_type_error(items):
    with pytest.raises(TypeError, match="str"):
        rustbpe.Tokenizer().train_from_iterator(items, 300)


def test_non_iterable_is_a_type_error():
    with pytest.raises(TypeError):
        rustbpe.Tokenizer().train_from_iterator(12, 300)


def test_lone_surrogate_is_a_value_error():
    with pytest.raises(ValueError):
        rustbpe.Tokenizer().train_from_iterator(["fine", "bad \ud800 text"], 300)


def test_invalid_pattern_is_a_value_error():
    with pytest.raises(ValueError, match="pattern"):
        rustbpe.Tokenizer().train_from_iterator(["hello"], 300, pattern="(unclosed")


def test_iterator_exceptions_propagate():
    def docs():
        yield "some text"
        raise RuntimeError("boom from the iterator")

    with pytest.raises(RuntimeError, match="boom from the iterator"):
        rustbpe.Tokenizer().train_from_iterator(docs(), 300, buffer_size=1)


def test_failed_training_keeps_previous_state():
    tok = trained(["hello hello world"], 260)
    before = vocab_of(tok)
    with pytest.raises(ValueError):
        tok.train_from_iterator([], 300)
    assert vocab_of(tok) == before
    assert tok.get_pattern() == GPT4_SPLIT_PATTERN


@pytest.mark.parametrize(
    "document",
    [
        lambda: ("".join(english_text(300) + mixed_text(100)) * 20)[:10_000_000],
        lambda: "a" * 10_000_000,
        lambda: " " * 10_000_000,
    ],
    ids=["sentences", "one-word", "spaces"],
)
def test_ten_megabyte_documents(document):
    text = document()
    tok = trained([text], 256 + 20)
    assert len(vocab_of(tok)) == 256 + 20
    sample = text[:100_000]
    assert tok.encode(sample) == tiktoken_of(tok).encode_ordinary(sample)


def test_regex_engine_limits_become_python_errors():
    # A pattern that backtracks a lot on a long run: fancy-regex gives up (its backtrack limit),
    # which must surface as a ValueError rather than crash the interpreter.
    text = "a" * 1_000_000 + "!"
    pattern = r"(?:a|aa)+(?=b)|\S"
    with pytest.raises(ValueError, match="regex"):
        trained([text], 260, pattern)


# --------------------------------------------------------------------------------------
# Threads and logging


def random_words_text(n_words, seed):
    """Text of made-up words: many distinct pairs, so training has plenty to do."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    return [" ".join(rng.choice(lexicon) for _ in range(1000)) for _ in range(n_words // 1000)]


def test_training_releases_the_gil():
    docs = random_words_text(300_000, seed=11)
    result = {}

    def train():
        start = time.perf_counter()
        result["tok"] = trained(docs, 256 + 3000)
        result["seconds"] = time.perf_counter() - start

    worker = threading.Thread(target=train)
    worker.start()
    last, longest_gap, spins = time.perf_counter(), 0.0, 0
    while worker.is_alive():
        now = time.perf_counter()
        longest_gap = max(longest_gap, now - last)
        last = now
        spins += 1
    worker.join()
    # Holding the GIL through training would stall this loop for the whole run.
    assert len(vocab_of(result["tok"])) == 256 + 3000
    assert longest_gap < max(0.5 * result["seconds"], 0.05), (longest_gap, result["seconds"], spins)


def test_progress_is_logged_to_python_logging(caplog):
    with caplog.at_level(logging.INFO, logger="rustbpe"):
        trained(english_text(10), 256 + 50)
    names = {r.name for r in caplog.records}
    assert any(name.startswith("rustbpe") for name in names), names
