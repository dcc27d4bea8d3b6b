"""
Decode speed of our Engine against the original engine's structure, measured in one run on the
same random-weight model: a cache that grows by concatenation, one eager forward per token, and
each step's next input built from the sampled ids on the host. Ours: the static-shape decode step
(preallocated cache, position as a tensor), compiled, the sampled ids fed straight back.

    python -m dev.bench_inference                       # CPU (or CUDA when available), depth 4
    python -m dev.bench_inference --depth=20 --json     # one GPU; ends with a line 'RESULT {json}'

Batch 1: greedy, one sample. Batch 8: sampled, eight rows from one prefill. Tokens/s counts the
generated tokens over the whole call, prefill included. The greedy tokens of ours, the baseline and
the naive GPT.generate must be identical.
"""

import argparse
import functools
import json
import os
import sys
import time

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanochat.engine import Engine, KVCache, sample_next_token
from nanochat.gpt import GPT, config_for_depth
from nanochat.training import autocast_context, synchronize


class SpecialIdsOnly:
    """The Engine needs only special-token ids; put them outside the vocabulary so that a random
    model never ends a reply early or calls the tool, and every run has exactly the same length."""

    NAMES = ["<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|assistant_end|>"]

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode_special(self, name):
        return self.vocab_size + self.NAMES.index(name)

    def get_bos_token_id(self):
        return self.vocab_size + len(self.NAMES)


# HBM bandwidth by GPU name, most specific first: a decode step reads every weight but the embedding (a lookup)
# once, so batch * bandwidth / those bytes bounds tokens/s (the KV cache, small here, is left out)
HBM_BYTES_PER_SEC = [("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("GH200", 4.0e12),
                     ("H200", 4.8e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.04e12), ("A100", 1.56e12)]


def weight_bytes_per_step(model):
    """Bytes of the weights a decode step reads: all but the embedding table, of which it reads a row per token."""
    embedding = model.transformer.wte.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)


def hbm_bound_tok_per_sec(device, weight_bytes, batch):
    """The weight-reading bound of decode tokens/s on this GPU, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_SEC if key in name), None)
    return None if bandwidth is None else batch * bandwidth / weight_bytes


def build_model(depth, vocab_size, device):
    torch.manual_seed(0)
    model = GPT(config_for_depth(depth, 1024, vocab_size)).to(device)
    model.init_weights()
    with torch.no_grad():  # the output layers start at zero; give the logits some shape
        model.lm_head.weight.normal_(0, 0.5)
        for block in model.transformer.h:
            block.attn.c_proj.weight.normal_(0, 0.02)
            block.mlp.c_proj.weight.normal_(0, 0.02)
    return model.eval()


def original_generate(model, tokens, num_samples, max_tokens, temperature, seed=42):
    """The original engine's decode loop (no tool use: the random model never calls it): token columns."""
    device = model.get_device()
    rng = torch.Generator(device=device).manual_seed(seed)
    config = model.config
    shape = dict(num_heads=config.n_kv_head, seq_len=len(tokens), head_dim=config.n_embd // config.n_head,
                 num_layers=config.n_layer)
    prefill = KVCache(batch_size=1, **shape)
    logits = model.forward(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prefill)[:, -1, :]
    next_ids = sample_next_token(logits.expand(num_samples, -1), rng, temperature)
    cache = KVCache(batch_size=num_samples, **shape)  # grows by concatenation as decoding goes on
    cache.prefill(prefill)
    columns = []
    for step in range(max_tokens):
        if step > 0:
            logits = model.forward(next_ids, kv_cache=cache)[:, -1, :]
            next_ids = sample_next_token(logits, rng, temperature)
        column = next_ids[:, 0].tolist()
        columns.append(column)
        next_ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
    return columns


def main():
    parser = argparse.ArgumentParser(description="Engine vs the original engine structure: decode speed")
    parser.add_argument("--device", default="", help="cpu|cuda (empty: cuda when available)")
    for flag, default in (("--depth", 4), ("--vocab_size", 8192), ("--prompt_len", 64), ("--new_tokens", 128),
                          ("--batch", 8)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--repeats", type=int, default=3, help="keep the best of this many runs")
    parser.add_argument("--compile", type=int, default=1, help="compile our decode step (1/0)")
    parser.add_argument("--json", action="store_true", help="end with a line 'RESULT {json}'")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args.depth, args.vocab_size, device)
    engine = Engine(model, SpecialIdsOnly(args.vocab_size), compile=bool(args.compile))
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    n, b = args.new_tokens, args.batch
    print(f"device={device} depth={args.depth} (width {model.config.n_embd}, {model.config.n_head} heads) "
          f"vocab={args.vocab_size} prompt={args.prompt_len} new_tokens={n} threads={torch.get_num_threads()} "
          f"ours compiled: {bool(args.compile)}, best of {args.repeats}", flush=True)

    def ours(k, temperature):
        return [col for col, _ in engine.generate(prompt, num_samples=k, max_tokens=n, temperature=temperature)]

    def baseline(k, temperature):
        return original_generate(model, prompt, k, n, temperature)

    # batch 1 greedy, batch b sampled; ours and the baseline alternate
    runs = {(fn.__name__, k): functools.partial(fn, k, t) for k, t in ((1, 0.0), (b, 1.0)) for fn in (ours, baseline)}
    best, outputs = {}, {}
    with torch.inference_mode(), autocast_context(device.type):
        t0 = time.perf_counter()
        for fn in runs.values():  # warm-up: compiles our step for both batch sizes
            fn()
        print(f"warm-up (compilation included): {time.perf_counter() - t0:.1f} s", flush=True)
        for _ in range(args.repeats):  # alternating, so a burst of load hits both sides alike
            for key, fn in runs.items():
                synchronize(device.type)
                t0 = time.perf_counter()
                outputs[key] = fn()
                synchronize(device.type)
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
        naive = list(model.generate(prompt, max_tokens=n, temperature=0.0))

    assert all(len(c) == b for c in outputs["ours", b]) and len(outputs["ours", b]) == n
    greedy_identical = [c[0] for c in outputs["ours", 1]] == [c[0] for c in outputs["baseline", 1]] == naive
    result = dict(device=str(device), depth=args.depth, new_tokens=n, greedy_identical=greedy_identical,
                  weight_bytes_per_step=weight_bytes_per_step(model))
    print(f"{'':10s} {'original tok/s':>15s} {'ours tok/s':>11s} {'ratio':>7s} {'ours / HBM bound':>17s}")
    for batch in (1, b):
        base_tps, ours_tps = batch * n / best["baseline", batch], batch * n / best["ours", batch]
        bound = hbm_bound_tok_per_sec(device, result["weight_bytes_per_step"], batch)
        fraction = None if bound is None else ours_tps / bound
        result[f"batch{batch}"] = dict(ours_tok_per_sec=ours_tps, baseline_tok_per_sec=base_tps,
                                       hbm_bound_tok_per_sec=bound, hbm_fraction=fraction)
        shown = "n/a" if fraction is None else f"{100 * fraction:.1f}%"
        print(f"{'batch ' + str(batch):10s} {base_tps:15.1f} {ours_tps:11.1f} {ours_tps / base_tps:6.2f}x {shown:>17s}")
    print(f"greedy batch-1 tokens identical (ours, original structure, GPT.generate): {greedy_identical}")
    if device.type == "cuda":  # a skipped CUDA graph leaves the step launching kernel by kernel
        skips = counters["inductor"]["cudagraph_skips"]
        result["cudagraph_skips"] = skips
        print(f"CUDA graphs skipped: {skips} (TORCH_LOGS=cudagraphs logs why)")
    if args.json:
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
