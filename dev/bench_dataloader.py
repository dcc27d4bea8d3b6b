"""
Is the pretraining loader fast enough? Measures, in one run on this machine's CPU:
  1. loader throughput: tokens/s that tokenizing_distributed_data_loader_with_state produces,
  2. training demand: tokens/s that a d4 GPT training step (forward + backward + optimizer) consumes,
and prints their ratio (we want the loader >= 5x faster, so it never stalls training).

    python -m dev.bench_dataloader                     # B=8, T=1024
    python -m dev.bench_dataloader --loader_steps=100 --train_steps=5

Shards: <base>/base_data when it holds at least two; otherwise the first corpus files of
$NANOCHAT_DATA_PACK are packed into a temporary folder. Tokenizer: <base>/tokenizer when it
exists, otherwise a byte-level tokenizer (announced in the output).
"""

import argparse
import os
import tempfile
import time

import torch

from dev.demo import byte_tokenizer
from nanochat import dataset, pack_corpus
from nanochat.dataloader import tokenizing_distributed_data_loader_with_state
from nanochat.gpt import GPT, config_for_depth


def pick_tokenizer():
    from nanochat.tokenizer import get_tokenizer
    try:
        tok = get_tokenizer()
    except FileNotFoundError:
        print("tokenizer: no <base>/tokenizer found -> byte-level tokenizer (256 bytes + specials). "
              "It yields ~4x more tokens per character than a trained BPE, so it is a stand-in, not the real figure.")
        return byte_tokenizer(), False
    print(f"tokenizer: trained BPE from <base>/tokenizer (vocab {tok.get_vocab_size()})")
    return tok, True


def pick_data_dir(tmp_root, num_pack_files):
    data_dir = dataset.get_data_dir()
    if len(dataset.list_parquet_files(data_dir)) >= 2:
        print(f"shards: {data_dir}")
        return data_dir
    files = pack_corpus.data_pack_corpus_files()[:num_pack_files]
    if len(files) < 2:
        raise SystemExit("no shards in <base>/base_data and no NANOCHAT_DATA_PACK corpus: run "
                         "`python -m nanochat.dataset -n 4` (or set NANOCHAT_DATA_PACK) first")
    print(f"shards: packing {len(files)} data-pack corpus files into a temporary folder")
    pack_corpus.pack_jsonl(files, data_dir=tmp_root)
    return tmp_root


def loader_tokens_per_second(tok, data_dir, B, T, steps, threads):
    loader = tokenizing_distributed_data_loader_with_state(B, T, "train", tokenizer_threads=threads, device="cpu",
                                                           tokenizer=tok, data_dir=data_dir)
    next(loader)  # warm-up: opens the first shard
    start = time.perf_counter()
    for _ in range(steps):
        next(loader)
    return steps * B * T / (time.perf_counter() - start)


def training_tokens_per_second(depth, vocab_size, B, T, steps):
    torch.manual_seed(0)
    model = GPT(config_for_depth(depth, T, vocab_size))
    model.init_weights()
    optimizers = model.setup_optimizers()
    x = torch.randint(0, vocab_size, (B, T))
    y = torch.randint(0, vocab_size, (B, T))

    def step():
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: d{depth}, {n_params / 1e6:.1f}M parameters, vocab {vocab_size}, "
          f"optimizer AdamW + Muon (setup_optimizers), {elapsed / steps:.2f} s/step")
    return steps * B * T / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--B", 8), ("--T", 1024), ("--depth", 4), ("--loader_steps", 40), ("--train_steps", 3),
                          ("--tokenizer_threads", 4)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--vocab_size", type=int, default=65536,
                        help="model vocab when the byte-level stand-in is used")
    parser.add_argument("--pack_files", type=int, default=3, help="data-pack corpus files to pack when no shards exist")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    tok, real = pick_tokenizer()
    vocab = tok.get_vocab_size() if real else args.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = pick_data_dir(tmp, args.pack_files)
        loader_tps = loader_tokens_per_second(tok, data_dir, args.B, args.T, args.loader_steps, args.tokenizer_threads)
    train_tps = training_tokens_per_second(args.depth, vocab, args.B, args.T, args.train_steps)
    print(f"loader:   {loader_tps:12,.0f} tokens/s  (B={args.B}, T={args.T}, {args.loader_steps} batches, "
          f"{args.tokenizer_threads} tokenizer threads)")
    print(f"training: {train_tps:12,.0f} tokens/s  (d{args.depth} forward+backward+step, B={args.B}, T={args.T})")
    ratio = loader_tps / train_tps
    print(f"ratio loader/training: {ratio:.1f}x  ({'OK' if ratio >= 5 else 'BELOW'} the 5x target)")


if __name__ == "__main__":
    main()
