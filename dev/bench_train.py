"""
Training step throughput of our GPT + optimizers against the original design's, in one run on random
tokens (model + optimizer, not the loader).

    python -m dev.bench_train --depth=4 --device_batch_size=2 --max_seq_len=512 --vocab_size=8192   # CPU
    python -m dev.bench_train --depth=20 --device_batch_size=32 --max_seq_len=2048                   # one H100

The baseline reproduces the original's recipe: the model torch.compile'd, Muon run eagerly one
parameter at a time with a bf16 Newton-Schulz, torch's fused AdamW. Ours is what base_train runs
(batched Newton-Schulz in the dtype picked for the device, our AdamW setup), compiled like the
baseline unless --compile=0, so the ratio isolates everything else.

On CPU the setups alternate round by round (a shared machine's load hits both alike). On CUDA each
runs to the end and is freed first: two d20 setups do not fit in 80 GB, and a dedicated GPU times steadily.
"""

import argparse
import gc
import json
import statistics
import time

import torch

from nanochat.common import autodetect_device_type
from nanochat.gpt import GPT, config_for_depth
from nanochat.training import autocast_context, mfu_percent, peak_memory_mib, synchronize


class OriginalMuon(torch.optim.Optimizer):
    """The original's Muon step: per parameter, eager, Newton-Schulz in bf16 with separate ops."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        params = list(params)
        groups = [dict(params=[p for p in params if p.numel() == n]) for n in sorted({p.numel() for p in params})]
        super().__init__(groups, dict(lr=lr, momentum=momentum))

    @staticmethod
    def newton_schulz(G, steps=5):
        a, b, c = (3.4445, -4.7750, 2.0315)
        X = G.bfloat16()
        if G.size(-2) > G.size(-1):
            X = X.mT
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        for _ in range(steps):
            A = X @ X.mT
            B = b * A + c * A @ A
            X = a * X + B @ X
        return X.mT if G.size(-2) > G.size(-1) else X

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp_(buf, group["momentum"])
                p.add_(self.newton_schulz(g), alpha=-group["lr"] * max(1, p.size(-2) / p.size(-1)) ** 0.5)


def build_model(args, device):
    with torch.device("meta"):
        model = GPT(config_for_depth(args.depth, args.max_seq_len, args.vocab_size))
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.init_weights()
    return model


def ours(args, device):
    model = build_model(args, device)
    compiled = torch.compile(model, dynamic=False) if args.compile else model
    return model, compiled, model.setup_optimizers()


def original(args, device):
    model = build_model(args, device)
    lr_scale = (model.config.n_embd / 768) ** -0.5
    adamw = torch.optim.AdamW([dict(params=model.lm_head.parameters(), lr=0.004 * lr_scale),
                               dict(params=model.transformer.wte.parameters(), lr=0.2 * lr_scale)],
                              betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, fused=True)
    muon = OriginalMuon(model.transformer.h.parameters(), lr=0.02, momentum=0.95)
    return model, torch.compile(model, dynamic=False), [adamw, muon]


class Runner:
    """One training setup: builds it, warms it up, then times single steps on demand."""

    def __init__(self, name, setup, args, device):
        self.name, self.device_type = name, device.type
        if self.device_type == "cuda":  # what an earlier setup left behind is freed first
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.raw_model, self.model, self.optimizers = setup(args, device)
        self.autocast_ctx = autocast_context(self.device_type)
        g = torch.Generator(device="cpu").manual_seed(1)
        B, T = args.device_batch_size, args.max_seq_len
        streams = [torch.randint(0, args.vocab_size, (B * T + 1,), generator=g).to(device) for _ in range(4)]
        self.batches = [(t[:-1].view(B, T), t[1:].view(B, T)) for t in streams]  # as the loader packs them
        self.tokens_per_step, self.step_times, self.losses = B * T, [], []
        t0 = time.perf_counter()
        for i in range(args.warmup_steps):  # compilation, allocator and kernel caches
            self.train_step(i)
        synchronize(self.device_type)
        self.warmup_seconds = time.perf_counter() - t0
        self.flops_per_token = self.raw_model.estimate_flops()

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
        for i in range(steps):
            synchronize(self.device_type)
            t0 = time.perf_counter()
            loss = self.train_step(i)
            self.losses.append(loss.item())  # the training loop logs it every step too
            self.step_times.append(time.perf_counter() - t0)
        return self

    def report(self):
        dt = statistics.median(self.step_times)
        tok_per_sec = self.tokens_per_step / dt
        s = dict(name=self.name, ms_per_step=dt * 1000, tok_per_sec=tok_per_sec, steps=len(self.step_times),
                 warmup_s=self.warmup_seconds, peak_mib=peak_memory_mib(self.device_type),
                 mfu=mfu_percent(self.flops_per_token, tok_per_sec, 1, self.device_type))
        mem = "peak memory allocated" if self.device_type == "cuda" else "process peak RSS so far"
        mfu = "n/a" if s["mfu"] is None else f"{s['mfu']:.2f}%"
        print(f"{self.name:9s} | {dt * 1000:9.1f} ms/step (median of {s['steps']}) | {tok_per_sec:12,.0f} tok/s | "
              f"MFU {mfu} | warm-up {self.warmup_seconds:.1f} s | {mem} {s['peak_mib']:,.0f} MiB", flush=True)
        return s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("--depth", 4), ("--device_batch_size", 2), ("--max_seq_len", 512), ("--vocab_size", 8192),
                          ("--warmup_steps", 3)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=8, help="timing rounds (interleaved on CPU)")
    parser.add_argument("--device_type", default="", help="cuda|cpu|mps; empty = autodetect")
    parser.add_argument("--compile", type=int, default=1, help="compile our model like the baseline's (1/0)")
    parser.add_argument("--no_baseline", action="store_true", help="time our setup only")
    parser.add_argument("--json", action="store_true", help="end with a line 'RESULT {json}'")
    args = parser.parse_args()
    device_type = args.device_type or autodetect_device_type()
    device = torch.device(device_type)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")
    config = config_for_depth(args.depth, args.max_seq_len, args.vocab_size)
    print(f"device {device_type} ({torch.get_num_threads()} CPU threads) | depth {args.depth} "
          f"(width {config.n_embd}, {config.n_head} heads) | batch {args.device_batch_size} x {args.max_seq_len} | "
          f"vocab {args.vocab_size} | ours compiled: {bool(args.compile)}", flush=True)
    setups = [("nanochat", ours)] + ([] if args.no_baseline else [("original", original)])
    if device_type == "cuda":  # one setup at a time (see the top of this file)
        summaries = [Runner(name, setup, args, device).time_steps(args.steps * args.rounds).report()
                     for name, setup in setups]
    else:
        runners = [Runner(name, setup, args, device) for name, setup in setups]
        for _ in range(args.rounds):
            for runner in runners:
                runner.time_steps(args.steps)
        summaries = [runner.report() for runner in runners]
    result = dict(device=device_type, depth=args.depth, batch=args.device_batch_size, seq=args.max_seq_len,
                  runs=summaries)
    if len(summaries) == 2:
        result["ratio"] = summaries[0]["tok_per_sec"] / summaries[1]["tok_per_sec"]
        print(f"ratio nanochat / original tok/s: {result['ratio']:.3f}")
        if device_type != "cuda":  # same weights, same batches, steps interleaved: the losses agree
            diff = max(abs(a - b) / abs(b) for a, b in zip(runners[0].losses, runners[1].losses))
            print(f"max relative loss difference over {len(runners[0].losses)} steps: {diff:.2e}")
            result["max_relative_loss_difference"] = diff
    if args.json:
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
