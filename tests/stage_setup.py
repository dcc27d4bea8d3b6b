"""
What the training-stage tests share: a tokenizer and a small checkpoint placed where the stages look
for them, reading a saved checkpoint back, and running a stage the way a user does (python -m or
torchrun). Tests assert on what a user reads: checkpoints, meta files, the report and the log.
"""

import json
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install_tokenizer(base_dir, tokenizer):
    from nanochat.tokenizer import save_token_bytes
    tok_dir = os.path.join(base_dir, "tokenizer")
    tokenizer.save(tok_dir)
    save_token_bytes(tokenizer, tok_dir)


def write_identity(base_dir, n=8):
    """A small identity_conversations.jsonl, as the runbooks download it, for the mid/SFT mixtures."""
    with open(os.path.join(base_dir, "identity_conversations.jsonl"), "w") as f:
        for i in range(n):
            f.write(json.dumps([{"role": "user", "content": f"who are you? ({i})"},
                                {"role": "assistant", "content": "I am nanochat, a small language model."}]) + "\n")


def save_model_checkpoint(base_dir, source_dir, tokenizer, seq_len=64, step=0, n_layer=1, n_embd=32, seed=0):
    """A small GPT as stage `source_dir` would save it, with the zero-initialised projections made
    non-zero (like a trained model): from all-zero matrices the first Muon step amplifies rounding
    noise, and runs that should agree to float precision would not."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    install_tokenizer(base_dir, tokenizer)
    config = GPTConfig(sequence_len=seq_len, vocab_size=tokenizer.get_vocab_size(), n_layer=n_layer, n_head=2,
                       n_kv_head=2, n_embd=n_embd)
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.05)
    meta = {"step": step, "model_config": config.__dict__, "device_batch_size": 2, "max_seq_len": seq_len}
    save_checkpoint(os.path.join(base_dir, source_dir, f"d{n_layer}"), step, model.state_dict(), None, meta)
    return model


def read_checkpoint(base_dir, source_dir, tag, step):
    """(parameters, meta) of a saved checkpoint, read from disk."""
    from nanochat.checkpoint_manager import load_checkpoint
    params, _, meta = load_checkpoint(os.path.join(base_dir, source_dir, tag), step, "cpu")
    return params, meta


def max_relative_difference(a, b):
    assert a.keys() == b.keys()
    return max(((a[k].float() - b[k].float()).norm() / a[k].float().norm().clamp_min(1e-12)).item() for k in a)


def run_stage(module, args, base_dir, nproc=1, timeout=900):
    """`python -m <module> args` (or under torchrun with nproc gloo ranks); returns stdout, fails with the log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, NANOCHAT_BASE_DIR=base_dir)
    if nproc == 1:
        cmd = [sys.executable, "-m", module] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               module, "--"] + args
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


def metric_runs(base_dir, stage_slug, key):
    """The report's curve `key` of a stage (report/metrics/<slug>.jsonl), split into one {step: value}
    per run: every run appends to the file and its first point restarts the steps."""
    runs = []
    with open(os.path.join(base_dir, "report", "metrics", f"{stage_slug}.jsonl")) as f:
        for record in map(json.loads, f):
            if key not in record:
                continue
            if not runs or record["step"] <= max(runs[-1]):
                runs.append({})
            runs[-1][record["step"]] = record[key]
    return runs
