"""
Helpers of dev/gpu_check.sh (the one-call GPU check); not meant to be run by hand.

    python -m dev.gpu_check corpus OUT_DIR   # the repo's own text as train/val JSONL documents
    python -m dev.gpu_check summary LOG_DIR  # the figures of a finished check; exit 1 if one fails

A GPU machine without network has no pretraining corpus, so the check trains its tokenizer and
its 20-step model on the text of this repository (code and docs): enough for the loss to fall.
"""

import argparse
import gzip
import json
import os
import re
import sys
from pathlib import Path

from dev.demo import repo_documents


def write_corpus(out_dir):
    """train.jsonl.gz and val.jsonl.gz (every tenth document) under out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "train.jsonl.gz"), os.path.join(out_dir, "val.jsonl.gz")]
    with gzip.open(paths[0], "wt", encoding="utf-8") as train, gzip.open(paths[1], "wt", encoding="utf-8") as val:
        for i, text in enumerate(repo_documents()):
            (val if i % 10 == 9 else train).write(json.dumps({"text": text}) + "\n")
    return paths


def result_line(log_path):
    """The JSON of the last 'RESULT {...}' line a benchmark printed."""
    lines = [line for line in Path(log_path).read_text().splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"no RESULT line in {log_path}: see that log for what went wrong")
    return json.loads(lines[-1][len("RESULT "):])


def percent(x):
    return "n/a" if x is None else f"{x:.2f}%"


def summary(log_dir):
    """Print the check's figures; returns the names of the verdicts that failed."""
    train = result_line(os.path.join(log_dir, "bench_train.log"))
    print(f"training, d{train['depth']} seq {train['seq']} device batch {train['batch']} on {train['device']}:")
    for run in train["runs"]:
        print(f"  {run['name']:10s} {run['tok_per_sec']:12,.0f} tok/s  {run['ms_per_step']:9.1f} ms/step  "
              f"MFU {percent(run['mfu'])}  peak {run['peak_mib']:,.0f} MiB")
    if train.get("ratio") is not None:
        print(f"  ours / original: {train['ratio']:.3f}x, max relative loss difference "
              f"{train['max_relative_loss_difference']:.2e}")

    decode = result_line(os.path.join(log_dir, "bench_inference.log"))
    print(f"decode, d{decode['depth']}, {decode['new_tokens']} new tokens, "
          f"{decode['weight_bytes_per_step'] / 2**20:,.0f} MiB of weights read per step on {decode['device']}:")
    for key, d in sorted((k, v) for k, v in decode.items() if k.startswith("batch")):
        fraction = d.get("hbm_fraction")
        bound = "HBM bound n/a" if fraction is None else f"{100 * fraction:.1f}% of the HBM bound"
        print(f"  {key:8s} ours {d['ours_tok_per_sec']:10,.1f} tok/s, original structure "
              f"{d['baseline_tok_per_sec']:10,.1f} tok/s ({d['ours_tok_per_sec'] / d['baseline_tok_per_sec']:.2f}x), "
              f"{bound}")
    print(f"  greedy tokens identical (Engine, original structure, GPT.generate): {decode['greedy_identical']}")
    if "cudagraph_skips" in decode:
        print(f"  CUDA graphs skipped by the compiled step: {decode['cudagraph_skips']}")

    log = Path(log_dir, "base_train.log").read_text()
    losses = [float(x) for x in re.findall(r"\| loss: ([0-9.]+)", log)]
    tok_per_sec = [int(x.replace(",", "")) for x in re.findall(r"tok/sec: ([0-9,]+)", log)]
    mfus = re.findall(r"mfu: ([0-9.]+|n/a)", log)
    if len(losses) < 2:
        raise SystemExit("base_train logged fewer than two steps: see base_train.log")
    falls = losses[-1] < losses[0]
    print(f"base_train, {len(losses)} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f} "
          f"({'falls' if falls else 'DOES NOT FALL'}); last step {tok_per_sec[-1]:,} tok/s, MFU {mfus[-1]}")

    engine_log = Path(log_dir, "engine_check.log").read_text()
    match = re.search(r"^match$", engine_log, re.M) is not None
    timing = re.search(r"^naive GPT\.generate: .*$", engine_log, re.M)
    print(f"Engine vs GPT.generate on the trained checkpoint: {'match' if match else 'MISMATCH'}"
          + (f" ({timing.group(0)})" if timing else ""))
    verdicts = {"decode greedy equality": decode["greedy_identical"], "base_train loss falls": falls,
                "Engine greedy equality": match}
    return [name for name, passed in verdicts.items() if not passed]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("corpus").add_argument("out_dir")
    sub.add_parser("summary").add_argument("log_dir")
    args = parser.parse_args()
    if args.command == "corpus":
        print(" ".join(write_corpus(args.out_dir)))
        return 0
    failed = summary(args.log_dir)
    print(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
