"""
Training throughput of our setup (GPT + Muon/AdamW, compiled and bf16-autocast on CUDA) against a
plain-PyTorch baseline measured in the same run (the same model run eagerly, torch.optim.AdamW for
every parameter). Prints tokens/s, MFU, peak memory and our ratio to the baseline.

    python -m dev.bench_train --depth=20 --device_batch_size=32 --max_seq_len=2048      # one H100
    python -m dev.bench_train --depth=4 --device_batch_size=1 --max_seq_len=512 --vocab_size=4096  # CPU

Random tokens stand in for data: this measures model + optimizer, not the loader.
"""

import argparse
import statistics
import time

import torch

from nanochat.common import autodetect_device_type
from nanochat.gpt import GPT, config_for_depth
from nanochat.training import autocast_context, mfu_percent, peak_memory_mib, synchronize


def build_model(args, device):
    with torch.device("meta"):
        model = GPT(config_for_depth(args.depth, args.max_seq_len, args.vocab_size))
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.init_weights()
    return model


def ours(args, device, device_type):
    model = build_model(args, device)
    optimizers = model.setup_optimizers()
    compiled = torch.compile(model, dynamic=False) if args.compile else model
    return model, compiled, optimizers


def baseline(args, device, device_type):
    model = build_model(args, device)
    fused = device_type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=fused)
    return model, model, [optimizer]


class Runner:
    """One training setup: builds it, warms it up (recording peak memory), then times steps on demand."""

    def __init__(self, name, setup, args, device, device_type):
        if device_type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.name, self.device_type = name, device_type
        self.raw_model, self.model, self.optimizers = setup(args, device, device_type)
        self.autocast_ctx = autocast_context(device_type)
        g = torch.Generator(device="cpu").manual_seed(1)
        B, T = args.device_batch_size, args.max_seq_len
        self.batches = []
        for _ in range(4):
            tokens = torch.randint(0, args.vocab_size, (B * T + 1,), generator=g).to(device)
            self.batches.append((tokens[:-1].view(B, T), tokens[1:].view(B, T)))  # as the loader packs them
        self.tokens_per_step = B * T
        self.step_times = []
        for i in range(args.warmup_steps):  # compilation, allocator and kernel caches
            self.train_step(i)
        synchronize(device_type)
        self.peak_mib = peak_memory_mib(device_type)

    def train_step(self, i):
        x, y = self.batches[i % len(self.batches)]
        with self.autocast_ctx:
            loss = self.model(x, y)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return loss

    def time_steps(self, steps):
        synchronize(self.device_type)
        t0 = time.time()
        for i in range(steps):
            loss = self.train_step(i)
        loss.item()
        synchronize(self.device_type)
        self.step_times.append((time.time() - t0) / steps)

    def report(self):
        dt = statistics.median(self.step_times)
        tok_per_sec = self.tokens_per_step / dt
        mfu = mfu_percent(self.raw_model.estimate_flops(), tok_per_sec, 1, self.device_type)
        mem_label = "peak memory allocated" if self.device_type == "cuda" else "process peak RSS so far"
        mfu_text = f"{mfu:.2f}%" if mfu is not None else "n/a (no reference peak off CUDA)"
        print(f"{self.name:9s} | {dt * 1000:9.1f} ms/step (median of {len(self.step_times)} rounds) | "
              f"{tok_per_sec:12,.0f} tok/s | MFU {mfu_text} | {mem_label} {self.peak_mib:,.0f} MiB")
        return tok_per_sec


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--device_batch_size", type=int, default=1)
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--vocab_size", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, alternating the setups")
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--device_type", default="", help="cuda|cpu|mps; empty = autodetect")
    parser.add_argument("--compile", type=int, default=-1, help="compile our model: 1/0; -1 = on CUDA only")
    parser.add_argument("--no_baseline", action="store_true", help="skip the plain-PyTorch baseline")
    args = parser.parse_args()
    device_type = args.device_type or autodetect_device_type()
    device = torch.device(device_type)
    args.compile = device_type == "cuda" if args.compile == -1 else bool(args.compile)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")
    config = config_for_depth(args.depth, args.max_seq_len, args.vocab_size)
    print(f"device {device_type} ({torch.get_num_threads()} CPU threads) | depth {args.depth} "
          f"(width {config.n_embd}, {config.n_head} heads) | batch {args.device_batch_size} x {args.max_seq_len} | "
          f"vocab {args.vocab_size} | ours compiled: {args.compile}")
    runners = [Runner("nanochat", ours, args, device, device_type)]
    if not args.no_baseline:
        runners.append(Runner("baseline", baseline, args, device, device_type))
    # alternate the setups round by round so a change in machine load hits both alike
    for _ in range(args.rounds):
        for runner in runners:
            runner.time_steps(args.steps)
    tok_per_sec = [runner.report() for runner in runners]
    if len(runners) == 2:
        print(f"ratio nanochat / baseline tok/s: {tok_per_sec[0] / tok_per_sec[1]:.3f} "
              "(baseline: eager model, torch.optim.AdamW on every parameter)")


if __name__ == "__main__":
    main()
