"""Shared fixtures: an isolated base dir, the offline data pack, and a small real tokenizer."""

import os

import pytest


def data_pack_dir():
    """The data pack from $NANOCHAT_DATA_PACK, or None when it is not configured/present."""
    pack = os.environ.get("NANOCHAT_DATA_PACK")
    if pack and os.path.isdir(pack):
        return os.path.abspath(pack)
    return None


@pytest.fixture
def data_pack():
    pack = data_pack_dir()
    if pack is None:
        pytest.skip("needs the data pack: set NANOCHAT_DATA_PACK to its folder")
    return pack


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """Point NANOCHAT_BASE_DIR at a fresh temporary folder for the test."""
    path = tmp_path / "nanochat_base"
    path.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(path))
    return str(path)


@pytest.fixture
def byte_tokenizer():
    """A RustBPETokenizer over the 256 raw bytes plus the special tokens (no training needed)."""
    import tiktoken
    from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer
    ranks = {bytes([i]): i for i in range(256)}
    specials = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="bytes", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return RustBPETokenizer(enc, "<|bos|>")
