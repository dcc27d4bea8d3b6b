"""Stand-ins the dev tools share: the repo's own text, a byte-level tokenizer, a random-weight checkpoint
and a chat_web process."""

import contextlib
import logging
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_SUFFIXES = (".py", ".md", ".sh", ".rs", ".html", ".toml")
SKIPPED_DIRS = {".git", ".venv", "target", "__pycache__", "node_modules"}


def repo_documents():
    """Every text file of the repo (code and docs) as one document, in a stable order."""
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(TEXT_SUFFIXES):
                with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if text.strip():
                    yield text


def byte_tokenizer():
    """The 256 bytes plus nanochat's special tokens: a tokenizer that needs no training."""
    import tiktoken

    from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer
    ranks = {bytes([i]): i for i in range(256)}
    specials = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="bytes", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return RustBPETokenizer(enc, "<|bos|>")


def save_random_checkpoint(base_dir, tokenizer, depth, stage_dir, seq_len):
    """A random-weight model of `depth` saved as a training stage saves it, with its tokenizer."""
    from dataclasses import asdict

    import torch

    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.tokenizer import save_token_bytes
    tokenizer.save(os.path.join(base_dir, "tokenizer"))
    save_token_bytes(tokenizer, os.path.join(base_dir, "tokenizer"))
    torch.manual_seed(0)
    config = config_for_depth(depth, seq_len, tokenizer.get_vocab_size())
    model = GPT(config)
    model.init_weights()
    save_checkpoint(os.path.join(base_dir, stage_dir, f"d{depth}"), 1, model.state_dict(), None,
                    {"step": 1, "model_config": asdict(config)})


@contextlib.contextmanager
def chat_web(base_dir, port, *flags, timeout=120):
    """`python -m scripts.chat_web` on CPU at 127.0.0.1:port over the checkpoints under base_dir; yields its
    url once /health says ready and kills it on exit. Raises if it exits first or is not ready in time."""
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    cmd = [sys.executable, "-m", "scripts.chat_web", "--device-type=cpu", "--host=127.0.0.1", f"--port={port}",
           *flags]
    server = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "NANOCHAT_BASE_DIR": base_dir},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}: {' '.join(cmd)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the server did not become ready in {timeout} s")
        yield url
    finally:
        server.kill()
        server.wait()
