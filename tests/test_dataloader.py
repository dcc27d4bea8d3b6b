"""Tests for nanochat/dataloader.py: rank sharding, re-epoching, exact resume, no dropped tokens."""

import json
import os
import re

import pyarrow.parquet as pq
import pytest
import torch

from nanochat import dataset, pack_corpus
from nanochat.dataloader import (iterate_row_groups, tokenizing_distributed_data_loader,
                                 tokenizing_distributed_data_loader_with_state)

ROWS = 8  # small row groups so a few hundred tiny documents make many of them
B, T = 2, 16


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


@pytest.fixture
def shards(base_dir, tmp_path, monkeypatch):
    """Train shards with 11 row groups (the last partial) and a one-row-group val shard of tagged documents."""
    monkeypatch.setattr(dataset, "ROW_GROUP_SIZE", ROWS)
    paths = [
        write_jsonl(tmp_path / "a.jsonl", [f"<a{i}>" + "x" * (i % 7) for i in range(40)]),
        write_jsonl(tmp_path / "b.jsonl", [f"<b{i}>" + "y" * (i % 5) for i in range(44)]),
        write_jsonl(tmp_path / "v.jsonl", [f"<v{i}>" for i in range(5)]),
    ]
    pack_corpus.pack_jsonl(paths, shard_chars=200)
    return dataset.list_parquet_files()


def loader(tok, **kw):
    kw.setdefault("device", "cpu")
    return tokenizing_distributed_data_loader_with_state(B, T, "train", tokenizer=tok, tokenizer_batch_size=3, **kw)


def expected_stream(tok, files, rank, world_size, epochs):
    """The token stream a rank should see: its row groups in order, BOS + document, epoch after epoch."""
    bos = tok.get_bos_token_id()
    stream = []
    for epoch, _, _, docs in iterate_row_groups(files, rank, world_size):
        if epoch == epochs:
            return stream
        for d in docs:
            stream += [bos] + tok.encode(d)


def test_row_groups_are_split_across_ranks_and_re_epoch(shards):
    files = shards[:-1]
    total = [(p, r) for p, f in enumerate(files) for r in range(pq.ParquetFile(f).num_row_groups)]
    assert len(total) == 11 and len(files) >= 3
    per_rank = []
    for rank in range(2):
        seen = {}
        for epoch, p, r, docs in iterate_row_groups(files, rank, 2):
            if epoch == 2:
                break
            seen.setdefault(epoch, []).append((p, r))
            assert total.index((p, r)) % 2 == rank  # rank r reads row groups r, r+W, ... of the split
        assert seen[0] == seen[1]  # the second epoch repeats the first
        assert len(seen[0]) == len(set(seen[0]))
        per_rank.append(set(seen[0]))
    assert not per_rank[0] & per_rank[1]
    assert sorted(per_rank[0] | per_rank[1]) == total
    assert [len(x) for x in per_rank] == [6, 5]  # balanced


def test_one_row_group_per_shard_still_feeds_every_rank(base_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "ROW_GROUP_SIZE", ROWS)
    paths = [write_jsonl(tmp_path / f"{i}.jsonl", [f"<{i}:{j}>" for j in range(ROWS)]) for i in range(7)]
    pack_corpus.pack_jsonl(paths, shard_chars=1)  # one row group per shard
    files = dataset.list_parquet_files()[:-1]
    assert len(files) == 6
    for rank in range(4):
        got = []
        for epoch, p, r, _ in iterate_row_groups(files, rank, 4):
            if epoch == 1:
                break
            got.append(p)
        assert got == [p for p in range(6) if p % 4 == rank]


def test_two_ranks_see_every_document_once_per_epoch(shards, byte_tokenizer):
    tok = byte_tokenizer
    tags_per_rank = []
    for rank in range(2):
        epoch_len = len(expected_stream(tok, shards[:-1], rank, 2, epochs=1))
        got = []
        for x, y, state in loader(tok, rank=rank, world_size=2):
            got += x.flatten().tolist()
            if len(got) >= epoch_len:
                break
        text = tok.decode([t for t in got[:epoch_len] if t != tok.get_bos_token_id()])
        tags = re.findall(r"<[ab]\d+>", text)
        assert len(tags) == len(set(tags))  # no document twice within the epoch
        tags_per_rank.append(set(tags))
    assert not tags_per_rank[0] & tags_per_rank[1]
    assert tags_per_rank[0] | tags_per_rank[1] == {f"<a{i}>" for i in range(40)} | {f"<b{i}>" for i in range(44)}


@pytest.mark.parametrize("rank", [0, 1])
def test_batches_tile_the_stream_without_dropping_tokens(shards, byte_tokenizer, rank):
    tok = byte_tokenizer
    stream = expected_stream(tok, shards[:-1], rank, 2, epochs=3)
    steps = len(stream) // (B * T) - 1  # runs through more than two epochs
    for k, (x, y, state) in enumerate(loader(tok, rank=rank, world_size=2)):
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
        assert x.flatten().tolist() == stream[k * B * T:(k + 1) * B * T]
        assert y.flatten().tolist() == stream[k * B * T + 1:(k + 1) * B * T + 1]
        if k == steps:
            break
    assert state["epoch"] == 2  # it re-epoched instead of hanging


def test_resume_reproduces_the_identical_stream(shards, byte_tokenizer):
    tok = byte_tokenizer
    batches, states = [], []
    for k, (x, y, state) in enumerate(loader(tok, rank=1, world_size=2)):
        batches.append((x.clone(), y.clone()))
        states.append(json.loads(json.dumps(state)))  # survives a JSON round trip
        if k == 60:
            break
    assert {"pq_idx", "rg_idx", "epoch"} <= set(states[0])
    assert states[-1]["epoch"] >= 1
    mid_doc = [k for k in range(55) if states[k]["token_idx"] > 0]
    crossing = [k for k in range(55) if states[k + 1]["epoch"] != states[k]["epoch"]]
    assert mid_doc and crossing
    for k in sorted({0, 7, mid_doc[0], crossing[0], crossing[0] + 1}):
        resumed = loader(tok, rank=1, world_size=2, resume_state_dict=states[k])
        for j in range(k + 1, k + 6):
            x, y, _ = next(resumed)
            assert torch.equal(x, batches[j][0]) and torch.equal(y, batches[j][1]), (k, j)


def test_reference_style_state_resumes_approximately(shards, byte_tokenizer):
    tok = byte_tokenizer
    x, y, state = next(loader(tok, rank=0, world_size=2, resume_state_dict={"pq_idx": 0, "rg_idx": 0}))
    assert state["rg_idx"] == 2 and state["pq_idx"] == 0  # skipped one stride: no row group repeated
    # saved at the last row group (3) of shard 0 (4 row groups): rank 1 goes on at global row group 5
    x, y, state = next(loader(tok, rank=1, world_size=2, resume_state_dict={"pq_idx": 0, "rg_idx": 3}))
    assert (state["pq_idx"], state["rg_idx"]) == (1, 1)
    x, y, state = next(loader(tok, rank=1, world_size=2, resume_state_dict={"pq_idx": 99, "rg_idx": 0}))
    assert state["epoch"] == 1 and state["pq_idx"] == 0 and state["rg_idx"] == 1


def test_val_split_is_the_last_shard_and_default_tokenizer(shards, byte_tokenizer, base_dir):
    from nanochat.tokenizer import save_token_bytes
    tok_dir = os.path.join(base_dir, "tokenizer")
    byte_tokenizer.save(tok_dir)
    save_token_bytes(byte_tokenizer, tok_dir)
    x, y = next(tokenizing_distributed_data_loader(2, 8, "val", device="cpu"))
    text = byte_tokenizer.decode(x.flatten().tolist())
    assert "<v0>" in text and "<a" not in text and "<b" not in text


def test_bad_arguments_have_clear_errors(shards, byte_tokenizer, base_dir):
    # the val split is one row group of 5 documents: 2 ranks share it, 6 cannot
    with pytest.raises(RuntimeError, match="rank 5 of 6 would get no document.*fewer ranks"):
        next(tokenizing_distributed_data_loader_with_state(B, T, "val", tokenizer=byte_tokenizer, device="cpu",
                                                           rank=1, world_size=6))
    with pytest.raises(ValueError, match="split"):
        next(tokenizing_distributed_data_loader_with_state(B, T, "test", tokenizer=byte_tokenizer, device="cpu"))
    with pytest.raises(ValueError, match="rank"):
        next(loader(byte_tokenizer, rank=2, world_size=2))
    for f in shards:
        os.remove(f)
    with pytest.raises(FileNotFoundError, match="nanochat.dataset"):
        next(loader(byte_tokenizer))


def test_batches_move_to_a_device_that_is_not_cuda(shards, byte_tokenizer):
    # the meta device stands in for MPS or any other accelerator: batches must land on it
    x, y, _ = next(loader(byte_tokenizer, device="meta"))
    assert x.device.type == "meta" and y.device.type == "meta" and x.shape == y.shape == (B, T)


# --- splits with fewer row groups than ranks: the ranks share each row group, split by document ---

@pytest.fixture
def small_shards(base_dir, tmp_path, monkeypatch):
    """A train split of 2 row groups (in one shard) and a val split of one row group of 8 documents of
    different lengths, so that batches end mid-document and epochs are crossed within a few steps."""
    monkeypatch.setattr(dataset, "ROW_GROUP_SIZE", ROWS)
    paths = [
        write_jsonl(tmp_path / "t.jsonl", [f"<t{i}>" + "x" * (3 * i) for i in range(2 * ROWS - 3)]),
        write_jsonl(tmp_path / "v.jsonl", [f"<v{i}>" + "z" * (5 * i) for i in range(ROWS)]),
    ]
    pack_corpus.pack_jsonl(paths, shard_chars=10**6)
    return dataset.list_parquet_files()


def tags_of_one_epoch(tok, split, rank, world_size):
    """The document tags one rank reads in its first epoch, from the batches of the loader."""
    got, states = [], []
    for x, y, state in tokenizing_distributed_data_loader_with_state(B, T, split, tokenizer=tok, device="cpu",
                                                                     tokenizer_batch_size=3, rank=rank,
                                                                     world_size=world_size):
        got += x.flatten().tolist()
        states.append(state)
        if state["epoch"] == 1:
            break
    text = tok.decode([t for t in got if t != tok.get_bos_token_id()])
    # the last batch reaches into epoch 1: keep the tags up to the first repeat
    tags = re.findall(r"<[tv]\d+>", text)
    first_epoch = tags[:tags.index(tags[0], 1)] if tags.count(tags[0]) > 1 else tags
    return first_epoch, states


@pytest.mark.parametrize("split,world_size,n_docs", [("val", 2, ROWS), ("val", 3, ROWS), ("train", 3, 2 * ROWS - 3)])
def test_ranks_share_row_groups_when_there_are_fewer_than_ranks(small_shards, byte_tokenizer, split, world_size,
                                                                 n_docs):
    prefix = "<v" if split == "val" else "<t"
    per_rank = []
    for rank in range(world_size):
        tags, states = tags_of_one_epoch(byte_tokenizer, split, rank, world_size)
        assert tags, f"rank {rank} got no document"
        assert len(tags) == len(set(tags))
        # within each row group rank r reads the documents r, r+W, r+2W, ...
        assert all(s["doc_idx"] % world_size == rank for s in states)
        per_rank.append(set(tags))
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not per_rank[a] & per_rank[b]
    assert set().union(*per_rank) == {f"{prefix}{i}>" for i in range(n_docs)}


def test_shared_row_groups_resume_exactly(small_shards, byte_tokenizer):
    tok = byte_tokenizer

    def val_loader(**kw):
        return tokenizing_distributed_data_loader_with_state(B, T, "val", tokenizer=tok, device="cpu",
                                                             tokenizer_batch_size=3, rank=1, world_size=2, **kw)
    batches, states = [], []
    for k, (x, y, state) in enumerate(val_loader()):
        batches.append((x.clone(), y.clone()))
        states.append(json.loads(json.dumps(state)))
        if k == 30:
            break
    mid_doc = [k for k in range(25) if states[k]["token_idx"] > 0]
    crossing = [k for k in range(25) if states[k + 1]["epoch"] != states[k]["epoch"]]
    later_doc = [k for k in range(25) if states[k]["doc_idx"] > 1]
    assert mid_doc and crossing and later_doc
    for k in sorted({0, 3, mid_doc[0], later_doc[0], crossing[0], crossing[0] + 1}):
        resumed = val_loader(resume_state_dict=states[k])
        for j in range(k + 1, k + 5):
            x, y, _ = next(resumed)
            assert torch.equal(x, batches[j][0]) and torch.equal(y, batches[j][1]), (k, j)


def test_a_split_too_small_for_every_rank_says_so(small_shards, byte_tokenizer):
    # the val row group holds 8 documents: 9 ranks cannot all get one
    with pytest.raises(RuntimeError, match=r"rank 8 of 9 .*8 documents.*fewer ranks"):
        next(tokenizing_distributed_data_loader_with_state(B, T, "val", tokenizer=byte_tokenizer, device="cpu",
                                                           rank=0, world_size=9))


@pytest.mark.slow  # torchrun: two processes, each importing torch
def test_base_train_on_two_ranks_with_a_one_row_group_val_split(base_dir):
    import pyarrow as pa
    from stage_setup import install_tokenizer, read_checkpoint, run_stage
    from test_base_train import even_vocab_tokenizer, write_shards
    install_tokenizer(base_dir, even_vocab_tokenizer())
    data_dir = os.path.join(base_dir, "base_data")
    write_shards(data_dir)
    val = os.path.join(data_dir, "shard_00001.parquet")  # the last shard: rewrite it as one row group
    pq.write_table(pa.table({"text": pq.read_table(val).column("text")}), val, row_group_size=10**6)
    assert pq.ParquetFile(val).num_row_groups == 1
    log = run_stage("scripts.base_train", ["--device_type=cpu", "--depth=2", "--max_seq_len=64",
                                           "--device_batch_size=2", "--total_batch_size=256", "--num_iterations=2",
                                           "--eval_every=2", "--eval_tokens=512", "--core_metric_every=-1",
                                           "--sample_every=-1"], base_dir, nproc=2)
    assert "Step 00002 | Validation bpb" in log
    _, meta = read_checkpoint(base_dir, "base_checkpoints", "d2", 2)
    assert 0 < meta["val_bpb"] < 20
