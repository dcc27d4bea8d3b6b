"""
Load test of the chat server: N concurrent streaming clients for a bounded time, each sending
OpenAI-style streaming chat requests back to back. Prints aggregate tokens/s, p50/p95 time to
first token and per-token latency, how many requests were refused (429) and how many failed.

    python -m dev.load_test                                # random d4 model: batched vs one request at a time
    python -m dev.load_test --clients=32 --max-batch-rows=8 --max-queue=8 --modes=batched
    python -m dev.load_test --url=http://127.0.0.1:8000    # a server that is already running

Without --url it writes a random-weight d4 checkpoint (vocab 8192) to a temporary directory and for
each mode starts `python -m scripts.chat_web` on it: "batched" with --max-batch-rows, "single" with
--max-batch-rows=1 (one request at a time per worker, as before batching). Modes alternate over
--rounds so that both see the same machine load.
"""

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from dev.demo import chat_web, repo_documents, save_random_checkpoint


def percentile(values, q):
    """The sorted value nearest the q-th percentile (0 <= q <= 100) of values; nan for none."""
    return sorted(values)[round(q / 100 * (len(values) - 1))] if values else float("nan")


def one_request(client, url, i, max_tokens, timeout):
    """Stream one reply; (status, time to first token, per-token latency, completion tokens)."""
    body = {"model": "nanochat", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "temperature": 1.0, "seed": i, "messages": [{"role": "user", "content": f"Tell me a story, number {i}."}]}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, None, None, 0
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[len("data: "):])
            if payload.get("usage"):
                tokens = payload["usage"]["completion_tokens"]
            elif any(choice["delta"].get("content") for choice in payload["choices"]):
                last = time.perf_counter()
                first = first or last
    if first is None or tokens == 0:
        return 599, None, None, 0  # a 200 that never produced a token counts as an error
    per_token = (last - first) / (tokens - 1) if tokens > 1 else None
    return 200, first - t0, per_token, tokens


def run_clients(url, clients, duration, max_tokens, timeout):
    """Every client sends requests back to back until `duration` has passed; returns the figures."""
    deadline = time.perf_counter() + duration

    def client_loop(c):
        outcomes = []
        with httpx.Client() as client:
            while time.perf_counter() < deadline:
                try:
                    outcome = one_request(client, url, c * 1000 + len(outcomes), max_tokens, timeout)
                except httpx.HTTPError as e:
                    outcome = (type(e).__name__, None, None, 0)
                outcomes.append(outcome)
                if outcome[0] == 429:
                    time.sleep(1.0)  # the server's Retry-After
        return outcomes

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for outcomes in pool.map(client_loop, range(clients)) for r in outcomes]
    wall = time.perf_counter() - t0
    served = [r for r in results if r[0] == 200]
    ttft = [r[1] for r in served]
    per_token = [r[2] for r in served if r[2] is not None]
    return {
        "requests": len(results), "served": len(served), "refused_429": sum(r[0] == 429 for r in results),
        "errors": sum(r[0] not in (200, 429) for r in results),
        "server_errors_5xx": sum(isinstance(r[0], int) and r[0] >= 500 for r in results),
        "tokens": sum(r[3] for r in served), "wall_s": wall,
        "tok_s": sum(r[3] for r in served) / wall,
        "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
        "tpot_p50": percentile(per_token, 50), "tpot_p95": percentile(per_token, 95),
    }


def report(name, r):
    print(f"{name:>8}: {r['tok_s']:7.1f} tok/s | TTFT p50 {r['ttft_p50']:.3f}s p95 {r['ttft_p95']:.3f}s | "
          f"per token p50 {r['tpot_p50'] * 1000:.1f}ms p95 {r['tpot_p95'] * 1000:.1f}ms | "
          f"{r['served']}/{r['requests']} served, {r['refused_429']} x 429, {r['errors']} errors "
          f"({r['server_errors_5xx']} x 5xx), {r['tokens']} tokens in {r['wall_s']:.1f}s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="test this running server instead of starting one")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load per run")
    parser.add_argument("--timeout", type=float, default=120.0, help="a request taking longer is an error (hung)")
    parser.add_argument("--modes", default="batched,single", help="with no --url: batched and/or single")
    parser.add_argument("--rounds", type=int, default=2, help="with no --url: runs of each mode, alternated")
    parser.add_argument("--max-batch-rows", type=int, default=8, help="rows of the batched mode")
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.url:
        report("server", run_clients(args.url, args.clients, args.duration, args.max_tokens, args.timeout))
        return
    modes = args.modes.split(",")
    runs = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as base_dir:
        print("writing a random d4 checkpoint (vocab 8192)...", flush=True)
        from nanochat.tokenizer import RustBPETokenizer  # its tokenizer is trained on this repository's text
        save_random_checkpoint(base_dir, RustBPETokenizer.train_from_iterator(repo_documents(), 8192), 4,
                               "base_checkpoints", 512)
        print(f"{args.clients} clients, {args.max_tokens} tokens per reply, {args.duration:.0f}s per run", flush=True)
        for _ in range(args.rounds):
            for mode in modes:
                rows = args.max_batch_rows if mode == "batched" else 1
                with chat_web(base_dir, args.port, "-i", "base", f"--max-batch-rows={rows}",
                              f"--max-queue={args.max_queue}") as url:
                    one_request(httpx.Client(), url, 0, 8, 60)  # warm-up
                    result = run_clients(url, args.clients, args.duration, args.max_tokens, args.timeout)
                report(mode, result)
                runs[mode].append(result)
    print("medians over rounds:")
    medians = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for mode, rs in runs.items()}
    for mode, m in medians.items():
        report(mode, m)
    if "batched" in medians and "single" in medians:
        b, s = medians["batched"], medians["single"]
        print(f"batched / single: tokens/s {b['tok_s'] / s['tok_s']:.2f}x, "
              f"TTFT p95 {b['ttft_p95']:.3f}s vs {s['ttft_p95']:.3f}s")


if __name__ == "__main__":
    main()
