"""
Train the BPE tokenizer on the first pretraining shards and save it to <base>/tokenizer:
tokenizer.pkl (a pickled tiktoken Encoding) and token_bytes.pt (bytes per token id, for bpb).

    python -m scripts.tok_train --max_chars=2000000000
"""

import argparse
import os
import time

from nanochat.common import get_base_dir, print0
from nanochat.tokenizer import RustBPETokenizer, save_token_bytes

# A mixed sample that must survive encode -> decode unchanged.
SANITY_TEXT = """Hello world! This is a test.
Numbers: 123, 4567, 89
Contractions: I'm, you're, it's
Special chars: @#$%^&*()
Unicode: 你好世界 🌍"""


def text_iterator(max_chars, doc_cap):
    """Training documents, each cropped to doc_cap chars, until max_chars have been yielded."""
    from nanochat.dataset import parquets_iter_batched
    nchars = 0
    for batch in parquets_iter_batched(split="train"):
        for doc in batch:
            doc_text = doc[:doc_cap]
            nchars += len(doc_text)
            yield doc_text
            if nchars > max_chars:
                return


def main():
    parser = argparse.ArgumentParser(description="Train a BPE tokenizer")
    parser.add_argument("--max_chars", type=int, default=10_000_000_000, help="Maximum characters to train on")
    parser.add_argument("--doc_cap", type=int, default=10_000, help="Maximum characters per document")
    parser.add_argument("--vocab_size", type=int, default=65536, help="Vocabulary size (including special tokens)")
    args = parser.parse_args()
    for name, value in vars(args).items():
        print0(f"{name}: {value:,}")

    from nanochat.dataset import list_parquet_files
    if len(list_parquet_files()) < 2:
        raise SystemExit(
            "tok_train needs pretraining shards (at least one train and one val shard) in "
            f"{os.path.join(get_base_dir(), 'base_data')}. Download them with `python -m nanochat.dataset -n 8`, "
            "or pack local text with `python -m nanochat.dataset --from-jsonl FILE...` "
            "(with NANOCHAT_DATA_PACK set, `python -m nanochat.dataset -n 8` packs the pack's corpus).")

    t0 = time.time()
    tokenizer = RustBPETokenizer.train_from_iterator(text_iterator(args.max_chars, args.doc_cap), args.vocab_size)
    train_time = time.time() - t0
    print0(f"Training time: {train_time:.2f}s")

    tokenizer_dir = os.path.join(get_base_dir(), "tokenizer")
    tokenizer.save(tokenizer_dir)

    decoded = tokenizer.decode(tokenizer.encode(SANITY_TEXT))
    assert decoded == SANITY_TEXT, f"tokenizer round-trip failed:\n{SANITY_TEXT!r}\n!=\n{decoded!r}"

    token_bytes, token_bytes_path = save_token_bytes(tokenizer, tokenizer_dir)
    print0(f"Saved token_bytes to {token_bytes_path}")

    nonzero = token_bytes[token_bytes > 0].to(dtype=float)
    from nanochat.report import get_report
    get_report().log(section="Tokenizer training", data=[
        vars(args),
        {"train_time": train_time},
        {"num_special_tokens": len(tokenizer.get_special_tokens())},
        {"token_bytes_min": int(nonzero.min().item()), "token_bytes_max": int(nonzero.max().item()),
         "token_bytes_mean": nonzero.mean().item(), "token_bytes_std": nonzero.std().item()},
    ])


if __name__ == "__main__":
    main()
