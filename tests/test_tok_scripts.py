"""scripts.tok_train and scripts.tok_eval end to end, as a user runs them, on text from the data pack."""

import gzip
import os

import torch

from stage_setup import run_stage


def write_corpus_sample(data_pack, folder, docs_per_file=(120, 30)):
    """Two small JSONL files cut from the pack's corpus: the last becomes the validation shard."""
    paths = []
    for n, part in zip(docs_per_file, ("part_007", "part_008")):
        path = os.path.join(folder, f"{part}.jsonl")
        with gzip.open(os.path.join(data_pack, "corpus", f"{part}.jsonl.gz"), "rt", encoding="utf-8") as src, \
                open(path, "w", encoding="utf-8") as dst:
            for _, line in zip(range(n), src):
                dst.write(line)
        paths.append(path)
    return paths


def test_tok_train_then_tok_eval(data_pack, base_dir, tmp_path):
    from nanochat.tokenizer import get_tokenizer
    run_stage("nanochat.dataset", ["--from-jsonl"] + write_corpus_sample(data_pack, str(tmp_path)), base_dir)
    out = run_stage("scripts.tok_train", ["--vocab_size=1024", "--max_chars=2000000"], base_dir)
    assert "Saved token_bytes" in out

    tok_dir = os.path.join(base_dir, "tokenizer")
    tokenizer = get_tokenizer()
    assert tokenizer.get_vocab_size() == 1024
    text = "The quick brown fox, 1234 times: naïve café!"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # token_bytes.pt holds each token's true UTF-8 length (specials 0), which bits-per-byte divides by
    token_bytes = torch.load(os.path.join(tok_dir, "token_bytes.pt"))
    specials = set(tokenizer.get_special_tokens())
    for token_id in range(tokenizer.get_vocab_size()):
        piece = tokenizer.decode([token_id])
        expected = 0 if piece in specials else len(tokenizer.enc.decode_single_token_bytes(token_id))
        assert token_bytes[token_id].item() == expected, (token_id, piece)

    out = run_stage("scripts.tok_eval", [], base_dir)
    ratios = {}
    for line in out.split("Our tokenizer:")[1].splitlines()[2:]:
        fields = line.split()
        if len(fields) == 4:
            ratios[fields[0]] = float(fields[3])
    assert {"news", "code", "fwe-train", "fwe-val"} <= set(ratios), out
    assert ratios["fwe-val"] > 2.5  # a trained BPE packs several bytes of English into a token; bytes alone give 1.0
    with open(os.path.join(base_dir, "report", "tokenizer-training.md")) as f:
        assert "vocab_size: 1024" in f.read()
    with open(os.path.join(base_dir, "report", "tokenizer-evaluation.md")) as f:
        assert "fwe-val" in f.read()
