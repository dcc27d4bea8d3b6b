"""Shared fixtures: an isolated base dir, the offline data pack, and a small real tokenizer."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_PACK = "needs the data pack"


def find_pack_beside_repo(repo=REPO):
    """A data pack in a `shared/data` folder next to the checkout or one of its parents, or None.

    Checkouts often sit as `<root>/main` or `<root>/wt/<name>` with the pack in `<root>/shared/data`."""
    folder = os.path.dirname(repo)
    while True:
        candidate = os.path.join(folder, "shared", "data")
        if os.path.isfile(os.path.join(candidate, "README.md")) and os.path.isdir(os.path.join(candidate, "corpus")):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


# Default the pack before any test (or the product code it runs, subprocesses included) reads it.
if not os.environ.get("NANOCHAT_DATA_PACK"):
    _found = find_pack_beside_repo()
    if _found:
        os.environ["NANOCHAT_DATA_PACK"] = _found


def data_pack_dir():
    """The data pack from $NANOCHAT_DATA_PACK, or None when it is not configured/present."""
    pack = os.environ.get("NANOCHAT_DATA_PACK")
    if pack and os.path.isdir(pack):
        return os.path.abspath(pack)
    return None


def skip_without_pack():
    pytest.skip(f"{NEEDS_PACK}: set NANOCHAT_DATA_PACK to its folder")


@pytest.fixture
def data_pack():
    pack = data_pack_dir()
    if pack is None:
        skip_without_pack()
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


def pytest_report_header(config):
    pack = data_pack_dir()
    return f"data pack: {pack}" if pack else "data pack: none (tests that need it will skip)"


def pytest_terminal_summary(terminalreporter):
    """Say plainly how many tests skipped for want of the data pack, so a run without it is not taken for full."""
    skipped = terminalreporter.stats.get("skipped", [])
    without_pack = [r for r in skipped if NEEDS_PACK in str(r.longrepr)]
    if without_pack:
        terminalreporter.write_line(
            f"{len(without_pack)} test(s) skipped for want of the data pack: set NANOCHAT_DATA_PACK "
            "to its folder (or place it in a shared/data folder beside the checkout)", yellow=True)
