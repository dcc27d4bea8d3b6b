"""
Export to / import from the Hugging Face transformers NanoChat format: logits and greedy
decoding agree with transformers, the tokenizer and chat template give our ids, and a round trip
returns bit-identical weights.
"""

import gzip
import json
import os
import random

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.hf_export import HFExportError, export_to_hf, import_hf_dir, load_hf_dir_as_nanochat
from nanochat.hf_tokenizer import CHAT_TEMPLATE, encoding_from_tokenizer_json, hf_tokenizer_from_encoding
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer, save_token_bytes

transformers = pytest.importorskip("transformers")

CONFIGS = {  # several depths; GQA (4 query heads share 2 kv heads) and MQA included
    "d1": dict(n_layer=1, n_head=2, n_kv_head=2, n_embd=32),
    "d2-gqa": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64),
    "d3-mqa": dict(n_layer=3, n_head=4, n_kv_head=1, n_embd=64),
}

TRICKY_STRINGS = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t x", "   leading and trailing   ", "a\r\nb\rc",
    "Hello world! It's 2024-11-24; we'll see. They're I'd you've",
    "naïve café – “quotes” — ellipsis…", "🙂👍🏽🚀 family: 👨‍👩‍👧‍👦", "漢字かな交じり文、中文句子。한국어 문장",
    "def f(x):\n    return x**2  # square\n\n\tif x:\n\t\tpass", "{\"a\": [1, 2.50, -3e10]}",
    "1234567890 12 123 1,000,000.99", "<|bos|>", "text<|user_start|>hi<|user_end|>more",
    "<|assistant_start|><|python_start|>2+2<|python_end|><|output_start|>4<|output_end|><|assistant_end|>",
    "<|bos", "|>", "<|not_special|>", "\u00a0\u2009\u3000 odd spaces", "ÿþ\x00\x01\x7f control",
    "x" * 300, " " * 40 + "y", "AAAA aaaa AaAa", "https://example.com/path?q=1&r=2#frag",
]


def random_model(model_config, seed):
    """A random GPT whose zero-initialised projections are perturbed so logits are non-trivial."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_config))
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.05)
            block.mlp.c_proj.weight.normal_(0, 0.05)
    return model.eval()


class NoSpecialTokens:
    """Tokenizer stand-in for Engine whose special ids the model can never emit, so Engine's
    stop and calculator logic stay out of a pure greedy-decoding comparison."""

    def encode_special(self, text):
        return -1

    def get_bos_token_id(self):
        return -1


def our_greedy(model, prompt, n):
    """Greedy tokens from our stack: naive GPT.generate and the KV-cached Engine."""
    from nanochat.engine import Engine
    engine = Engine(model, NoSpecialTokens())
    steps = engine.generate(prompt, num_samples=1, max_tokens=n, temperature=0.0)
    return {"GPT.generate": list(model.generate(prompt, n, temperature=0.0)),
            "Engine.generate": [column[0] for column, _ in steps]}


def load_hf(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


# -----------------------------------------------------------------------------
# 1. model parity

@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_decoding_match_transformers(name, byte_tokenizer, tmp_path):
    config = dict(sequence_len=64, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS[name])
    model = random_model(config, seed=len(name))
    out = str(tmp_path / "hf")
    export_to_hf(out, model.state_dict(), config, byte_tokenizer.enc, chat=True)
    hf = load_hf(out)
    assert type(hf).__name__ == "NanoChatForCausalLM"

    ids = torch.randint(0, config["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.std() > 0.1  # the comparison is not between two near-zero tensors
    max_diff = (ours - theirs).abs().max().item()
    print(f"{name}: max |logits diff| = {max_diff:.3g}")
    assert max_diff <= 1e-4

    prompt = ids[0, :8].tolist()
    hf.generation_config.eos_token_id = None  # compare all 32 steps, never stop early
    got = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    assert len(got) == 32
    for how, expected in our_greedy(model, prompt, 32).items():
        print(f"{name}: greedy 32 tokens, {how} == transformers: {expected == got}")
        assert expected == got, how


def test_bfloat16_export_writes_bfloat16_weights(byte_tokenizer, tmp_path):
    from safetensors.torch import load_file
    config = dict(sequence_len=32, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS["d1"])
    model = random_model(config, seed=3)
    out = str(tmp_path / "hf")
    export_to_hf(out, model.state_dict(), config, byte_tokenizer.enc, chat=False, dtype="bfloat16")
    tensors = load_file(os.path.join(out, "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    with open(os.path.join(out, "generation_config.json")) as f:  # base model: a new document ends the text
        assert json.load(f)["eos_token_id"] == byte_tokenizer.get_bos_token_id()


# -----------------------------------------------------------------------------
# 2. tokenizer parity

def encoding_from_bpe_training(texts, vocab_size):
    """Train byte-level BPE with HF `tokenizers` and turn its merges into tiktoken ranks like ours."""
    import tiktoken
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from nanochat.hf_tokenizer import bytes_to_unicode
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False, min_frequency=0,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([i]): i for i in range(256)}
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def assert_same_ids(enc, strings, tmp_path):
    """HF tokenizer saved to disk and reloaded (both raw `tokenizers` and AutoTokenizer) gives our ids."""
    from tokenizers import Tokenizer
    out = tmp_path / "tok"
    out.mkdir()
    hf_tokenizer_from_encoding(enc).save(str(out / "tokenizer.json"))
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    for s in strings:
        expected = enc.encode(s, allowed_special="all")
        assert raw.encode(s, add_special_tokens=False).ids == expected, repr(s)
        assert raw.decode(expected, skip_special_tokens=False) == enc.decode(expected), repr(s)
    # the import direction rebuilds the very same encoding
    back = encoding_from_tokenizer_json(str(out / "tokenizer.json"))
    assert back._mergeable_ranks == enc._mergeable_ranks and back._special_tokens == enc._special_tokens
    assert back._pat_str == enc._pat_str


def test_tokenizer_parity_small_built_in_corpus(tmp_path):
    texts = [s for s in TRICKY_STRINGS if s] * 20 + ["the quick brown fox jumps over the lazy dog " * 5] * 50
    enc = encoding_from_bpe_training(texts, vocab_size=600)
    assert enc.n_vocab <= 600  # a small corpus may not fill the whole vocab
    assert len(enc._mergeable_ranks) > 300  # real merges, not just bytes
    assert_same_ids(enc, TRICKY_STRINGS, tmp_path)


@pytest.fixture(scope="module")
def pack_encoding():
    pack = os.environ.get("NANOCHAT_DATA_PACK")
    if not pack or not os.path.isdir(pack):
        pytest.skip("needs the data pack: set NANOCHAT_DATA_PACK to its folder")
    docs = []
    with gzip.open(os.path.join(pack, "corpus", "part_008.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if sum(map(len, docs)) > 3_000_000:
                break
    with open(os.path.join(pack, "chat", "test.jsonl"), encoding="utf-8") as f:
        chats = [json.loads(line) for line in f]
    return encoding_from_bpe_training(docs, vocab_size=2048), docs, chats


def test_tokenizer_parity_on_data_pack(pack_encoding, tmp_path):
    enc, docs, chats = pack_encoding
    assert enc.n_vocab == 2048
    rng = random.Random(0)
    strings = list(TRICKY_STRINGS)
    chat_texts = [m["content"] for c in chats for m in c["messages"]]
    strings += rng.sample(chat_texts, 300)
    while len(strings) < 1000:
        doc = rng.choice(docs)
        start = rng.randrange(len(doc))
        strings.append(doc[start:start + rng.choice([1, 5, 40, 200, 1000])])
    assert len(strings) == 1000
    assert_same_ids(enc, strings, tmp_path)


# -----------------------------------------------------------------------------
# chat template

CONVERSATIONS = [
    {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?\n  Show  work 🙂"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "python", "text": "4*3"},
            {"type": "python_output", "text": "12"},
            {"type": "text", "text": " It is 12."}]},
        {"role": "user", "content": "漢字 thanks"},
        {"role": "assistant", "content": "unused: removed by render_for_completion"},
    ]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]


def assert_chat_template_matches(tokenizer, out_dir):
    hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert hf_tok.chat_template == CHAT_TEMPLATE
    for conversation in CONVERSATIONS:
        expected = tokenizer.render_for_completion(conversation)
        rendered = hf_tok.apply_chat_template(conversation["messages"][:-1], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)
        assert rendered["input_ids"] == expected
    # plain text: same ids after the BOS that the HF tokenizer prepends by default
    assert hf_tok("Hello world").input_ids == [tokenizer.get_bos_token_id()] + tokenizer.encode("Hello world")


def test_chat_template_matches_render_for_completion(byte_tokenizer, tmp_path):
    config = dict(sequence_len=32, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS["d1"])
    out = str(tmp_path / "hf")
    export_to_hf(out, random_model(config, 0).state_dict(), config, byte_tokenizer.enc, chat=True)
    assert_chat_template_matches(byte_tokenizer, out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == "<|assistant_end|>" and hf_tok.bos_token == "<|bos|>"


def test_chat_template_with_trained_tokenizer(pack_encoding, tmp_path):
    enc = pack_encoding[0]
    tokenizer = RustBPETokenizer(enc, "<|bos|>")
    config = dict(sequence_len=32, vocab_size=enc.n_vocab, **CONFIGS["d1"])
    out = str(tmp_path / "hf")
    export_to_hf(out, random_model(config, 0).state_dict(), config, enc, chat=True)
    assert_chat_template_matches(tokenizer, out)


# -----------------------------------------------------------------------------
# 3. round trip through the scripts, and bad input

def save_our_checkpoint(base_dir, model, source_dir="chatsft_checkpoints", tag="d2", step=7):
    checkpoint_dir = os.path.join(base_dir, source_dir, tag)
    from nanochat.checkpoint_manager import save_checkpoint
    meta = {"step": step, "val_loss": 1.25, "model_config": dict(model.config.__dict__)}
    save_checkpoint(checkpoint_dir, step, model.state_dict(), None, meta)
    return checkpoint_dir


def install_tokenizer(base_dir, tokenizer):
    tokenizer_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tokenizer_dir)
    save_token_bytes(tokenizer, tokenizer_dir)


def test_round_trip_is_bit_identical(base_dir, byte_tokenizer, tmp_path, monkeypatch, capsys):
    from scripts import export_hf, import_hf
    install_tokenizer(base_dir, byte_tokenizer)
    config = dict(sequence_len=64, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS["d2-gqa"])
    model = random_model(config, seed=11)
    save_our_checkpoint(base_dir, model)
    out = str(tmp_path / "hf")
    assert export_hf.main(["--source=sft", f"--out={out}"]) == 0

    # import into a fresh base dir: the tokenizer is installed there too
    fresh = tmp_path / "fresh_base"
    fresh.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(fresh))
    assert import_hf.main([out]) == 0
    checkpoint_dir = fresh / "chatsft_checkpoints" / "d2"
    state_dict = torch.load(checkpoint_dir / "model_000007.pt", map_location="cpu")
    original = model.state_dict()
    assert state_dict.keys() == original.keys()
    for key, tensor in original.items():
        assert state_dict[key].dtype == tensor.dtype and torch.equal(state_dict[key], tensor), key
    with open(checkpoint_dir / "meta_000007.json") as f:
        meta = json.load(f)
    assert meta["model_config"] == config and meta["step"] == 7 and meta["val_loss"] == 1.25
    restored = RustBPETokenizer.from_directory(str(fresh / "tokenizer"))
    assert restored.enc._mergeable_ranks == byte_tokenizer.enc._mergeable_ranks
    assert (fresh / "tokenizer" / "token_bytes.pt").exists()

    # importing again onto the same checkpoint is refused without --force
    assert import_hf.main([out]) == 1
    assert "--force" in capsys.readouterr().err
    assert import_hf.main([out, "--force"]) == 0

    # the loader used by evaluation gives our model with the same logits
    loaded, tokenizer, _ = load_hf_dir_as_nanochat(out, "cpu")
    ids = torch.randint(0, config["vocab_size"], (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert tokenizer.encode("abc") == byte_tokenizer.encode("abc")


def test_export_of_missing_checkpoint_lists_the_existing_ones(base_dir, byte_tokenizer, tmp_path, capsys):
    from scripts import export_hf
    install_tokenizer(base_dir, byte_tokenizer)
    config = dict(sequence_len=32, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS["d1"])
    save_our_checkpoint(base_dir, random_model(config, 0), source_dir="base_checkpoints", tag="d1", step=40)
    assert export_hf.main(["--source=sft", f"--out={tmp_path / 'a'}"]) == 1
    err = capsys.readouterr().err
    assert "--source=base --model_tag=d1 --step=40" in err
    assert export_hf.main(["--source=base", "--step=41", f"--out={tmp_path / 'a'}"]) == 1
    assert "--source=base --model_tag=d1 --step=40" in capsys.readouterr().err


def test_non_empty_export_dir_needs_force(base_dir, byte_tokenizer, tmp_path, capsys):
    from scripts import export_hf
    install_tokenizer(base_dir, byte_tokenizer)
    config = dict(sequence_len=32, vocab_size=byte_tokenizer.get_vocab_size(), **CONFIGS["d1"])
    save_our_checkpoint(base_dir, random_model(config, 0), source_dir="base_checkpoints", tag="d1", step=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export_hf.main(["--source=base", f"--out={out}"]) == 1
    assert "notes.txt" in capsys.readouterr().err and not (out / "config.json").exists()
    assert export_hf.main(["--source=base", f"--out={out}", "--force"]) == 0
    assert (out / "config.json").exists() and (out / "notes.txt").read_text() == "keep me"


def test_import_refuses_other_architectures(base_dir, tmp_path):
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(HFExportError, match="model_type='llama'"):
        import_hf_dir(str(other))
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf_dir(str(tmp_path))
