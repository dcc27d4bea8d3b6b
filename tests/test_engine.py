"""KV cache, sampling, the calculator state machine and cache-vs-naive equivalence of the Engine."""

import pytest
import torch

from nanochat.engine import KVCache


def test_kv_cache_resize():
    batch_size, num_heads, seq_len, head_dim, num_layers = 2, 3, 4, 5, 6
    kv_cache = KVCache(batch_size=batch_size, num_heads=num_heads, seq_len=seq_len,
                       head_dim=head_dim, num_layers=num_layers)

    def insert_token(token_idx):
        for layer_idx in range(num_layers):
            k = torch.full((batch_size, num_heads, 1, head_dim), float(token_idx), dtype=torch.float32)
            v = torch.full((batch_size, num_heads, 1, head_dim), float(token_idx * 100), dtype=torch.float32)
            kv_cache.insert_kv(layer_idx, k, v)

    for i in range(4):
        insert_token(i)
    original_cache = kv_cache.kv_cache.clone()
    original_seq_len = original_cache.shape[4]

    insert_token(4)
    new_seq_len = kv_cache.kv_cache.shape[4]
    assert new_seq_len > original_seq_len, f"cache did not resize: {original_seq_len} -> {new_seq_len}"

    for layer_idx in range(num_layers):
        for token_idx in range(4):
            expected_k, expected_v = float(token_idx), float(token_idx * 100)
            actual_k = kv_cache.kv_cache[layer_idx, 0, :, :, token_idx, :]
            actual_v = kv_cache.kv_cache[layer_idx, 1, :, :, token_idx, :]
            assert (actual_k == expected_k).all(), f"layer {layer_idx} token {token_idx}: keys changed"
            assert (actual_v == expected_v).all(), f"layer {layer_idx} token {token_idx}: values changed"
            assert (actual_k == original_cache[layer_idx, 0, :, :, token_idx, :]).all()
            assert (actual_v == original_cache[layer_idx, 1, :, :, token_idx, :]).all()


# -----------------------------------------------------------------------------
# a tiny random model whose logits are not all zero

def make_model(depth=2, seq_len=128, vocab_size=265, n_kv_head=None, seed=0):
    from nanochat.gpt import GPT, config_for_depth
    torch.manual_seed(seed)
    config = config_for_depth(depth, seq_len, vocab_size)
    if n_kv_head is not None:
        config.n_head, config.n_kv_head = 4, n_kv_head  # GQA: fewer key/value heads
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():  # init zeroes the output projections; give them small random values
        model.lm_head.weight.normal_(0, 0.5)
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.05)
            block.mlp.c_proj.weight.normal_(0, 0.05)
    return model.eval()


def test_kv_cache_layout_pos_and_prefill_broadcast():
    cache = KVCache(batch_size=1, num_heads=2, seq_len=3, head_dim=4, num_layers=2)
    assert cache.kv_cache is None and cache.get_pos() == 0  # lazy
    k = torch.randn(1, 2, 3, 4)
    cache.insert_kv(0, k, -k)
    assert cache.get_pos() == 0  # only the last layer advances the position
    cache.insert_kv(1, 2 * k, -2 * k)
    assert cache.get_pos() == 3 and cache.kv_cache.shape == (2, 2, 1, 2, 3, 4)
    wide = KVCache(batch_size=3, num_heads=2, seq_len=10, head_dim=4, num_layers=2)
    wide.prefill(cache)
    assert wide.get_pos() == 3 and wide.kv_cache.shape == (2, 2, 3, 2, 10, 4)
    for row in range(3):
        assert torch.equal(wide.kv_cache[1, 0, row, :, :3], 2 * k[0])
    with pytest.raises(AssertionError):
        wide.prefill(cache)  # only into an empty cache
    cache.reset()
    assert cache.get_pos() == 0 and cache.kv_cache is not None


def test_sample_next_token_modes():
    from nanochat.engine import sample_next_token
    rng = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9], [3.0, 0.0, 0.0, 0.0]])
    assert sample_next_token(logits, rng, temperature=0.0).tolist() == [[1], [0]]
    picks = {sample_next_token(logits[:1], rng, temperature=1.0, top_k=2).item() for _ in range(200)}
    assert picks == {1, 3}  # top-2 only, both drawn
    picks = {sample_next_token(logits[:1], rng, temperature=5.0, top_k=0).item() for _ in range(300)}
    assert picks == {0, 1, 2, 3}  # top_k=0 means no truncation
    with pytest.raises(ValueError):
        sample_next_token(logits, rng, temperature=-1.0)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_engine_greedy_matches_naive_generate(byte_tokenizer, n_kv_head):
    from nanochat.engine import Engine
    model = make_model(n_kv_head=n_kv_head)
    prompt = byte_tokenizer.encode("The quick brown fox", prepend=byte_tokenizer.get_bos_token_id())
    naive = list(model.generate(prompt, max_tokens=40, temperature=0.0))
    engine = Engine(model, byte_tokenizer)
    # several samples fanned out from one prefill: greedy rows are all the naive sequence
    steps = list(engine.generate(prompt, num_samples=3, max_tokens=40, temperature=0.0))
    assert len(steps) == 40
    for row in range(3):
        assert [column[row] for column, _ in steps] == naive
    assert len(set(naive)) > 3  # the model is not degenerate


def test_engine_decodes_past_its_first_cache_capacity(byte_tokenizer):
    from nanochat.engine import Engine
    model = make_model(seq_len=64)  # without max_tokens the decode cache starts at 256 slots
    prompt = byte_tokenizer.encode("abcdefghij", prepend=byte_tokenizer.get_bos_token_id())
    naive = list(model.generate(prompt, max_tokens=300, temperature=0.0))
    gen = Engine(model, byte_tokenizer).generate(prompt, num_samples=2, temperature=0.0)
    cached = [next(gen)[0] for _ in range(300)]  # prompt + 300 > 256: the cache had to grow
    assert [c[0] for c in cached] == naive and [c[1] for c in cached] == naive



def test_compiled_decode_step_matches_naive_generate(byte_tokenizer):
    """The compiled step (the CUDA default; cpp_wrapper on CPU) decodes what the eager model does,
    also after the cache grows and the step is compiled again for the new capacity."""
    from nanochat.engine import Engine
    model = make_model(seq_len=64)
    prompt = byte_tokenizer.encode("compiled", prepend=byte_tokenizer.get_bos_token_id())
    naive = list(model.generate(prompt, max_tokens=260, temperature=0.0))
    gen = Engine(model, byte_tokenizer, compile=True).generate(prompt, num_samples=2, temperature=0.0)
    compiled = [next(gen)[0] for _ in range(260)]
    assert [c[0] for c in compiled] == naive and [c[1] for c in compiled] == naive

def test_first_token_is_sampled_independently_per_sample(byte_tokenizer):
    from nanochat.engine import Engine
    model = make_model()
    prompt = [byte_tokenizer.get_bos_token_id()]
    engine = Engine(model, byte_tokenizer)
    first = next(engine.generate(prompt, num_samples=16, max_tokens=1, temperature=2.0))[0]
    assert len(set(first)) > 1  # a broadcast first token would make every sample identical


def test_sampling_is_reproducible_by_seed(byte_tokenizer):
    from nanochat.engine import Engine
    engine = Engine(make_model(), byte_tokenizer)
    prompt = byte_tokenizer.encode("hi", prepend=byte_tokenizer.get_bos_token_id())
    run = lambda seed: engine.generate_batch(prompt, num_samples=2, max_tokens=20, temperature=1.0, seed=seed)[0]
    assert run(7) == run(7)
    assert run(7) != run(8)


class ScriptedModel:
    """Stands in for GPT: always prefers the next id of a script, so the test controls the sample."""

    def __init__(self, script, vocab_size=265):
        from nanochat.gpt import GPTConfig
        self.config = GPTConfig(sequence_len=64, vocab_size=vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=4)
        self.script, self.calls = script, 0

    def get_device(self):
        return torch.device("cpu")

    def forward(self, ids, kv_cache=None):
        B, T = ids.shape
        k = torch.zeros(B, 1, T, 4)
        kv_cache.insert_kv(0, k, k)
        logits = torch.zeros(B, T, self.config.vocab_size)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits


def test_calculator_tool_forces_its_output(byte_tokenizer):
    from nanochat.engine import Engine
    tok = byte_tokenizer
    special = tok.encode_special
    script = [special("<|python_start|>")] + tok.encode("12*7") + [special("<|python_end|>")]
    script += [ord("!")] * 8 + [special("<|assistant_end|>")]
    engine = Engine(ScriptedModel(script), tok)
    columns = list(engine.generate([tok.get_bos_token_id()], max_tokens=40, temperature=0.0))
    tokens = [c[0][0] for c in columns]
    masks = [c[1][0] for c in columns]
    expected_output = [special("<|output_start|>")] + tok.encode("84") + [special("<|output_end|>")]
    start = len(script) - 9  # just after <|python_end|>
    assert tokens[start:start + len(expected_output)] == expected_output
    assert masks[start:start + len(expected_output)] == [0] * len(expected_output)
    assert all(m == 1 for m in masks[:start])
    assert tokens[-1] == special("<|assistant_end|>")  # stopped once the row completed

    engine.model.calls = 0  # replay the script
    results, result_masks = engine.generate_batch([tok.get_bos_token_id()], max_tokens=40, temperature=0.0)
    assert special("<|assistant_end|>") not in results[0]  # terminal token not included
    assert results[0][:1] == [tok.get_bos_token_id()] and result_masks[0][0] == 0
    assert len(results[0]) == len(result_masks[0]) == len(tokens)


def test_hostile_tool_call_yields_no_output(byte_tokenizer):
    from nanochat.engine import Engine
    tok = byte_tokenizer
    special = tok.encode_special
    script = [special("<|python_start|>")] + tok.encode("10**10**10") + [special("<|python_end|>"),
                                                                          special("<|assistant_end|>")]
    columns = list(Engine(ScriptedModel(script), tok).generate([tok.get_bos_token_id()], max_tokens=30,
                                                               temperature=0.0))
    tokens = [c[0][0] for c in columns]
    assert special("<|output_start|>") not in tokens and tokens[-1] == special("<|assistant_end|>")


def test_generate_rejects_bad_prompts(byte_tokenizer):
    from nanochat.engine import Engine
    engine = Engine(make_model(), byte_tokenizer)
    for bad in ([], "hello", [1, "2"]):
        with pytest.raises(ValueError, match="non-empty list of ints"):
            next(engine.generate(bad))


def test_reply_decoder_hides_special_tokens_and_splits_utf8_safely(byte_tokenizer):
    from nanochat.engine import ReplyDecoder
    tok = byte_tokenizer
    special = tok.encode_special
    ids = tok.encode("héllo ") + [special("<|python_start|>")] + tok.encode("2+3") + [special("<|python_end|>"),
           special("<|output_start|>")] + tok.encode("5") + [special("<|output_end|>")] + tok.encode(" ✓")
    ids += [special("<|assistant_end|>")] + tok.encode("ignored")
    decoder = ReplyDecoder(tok)
    pieces = [decoder.add(t) for t in ids]
    assert "".join(pieces) == "héllo [calculator: 2+3] = 5 ✓"
    assert all("\ufffd" not in p for p in pieces)  # multi-byte characters come out whole
    assert decoder.stop
