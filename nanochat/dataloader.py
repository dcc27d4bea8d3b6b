"""
Streaming tokenizing loader for pretraining: each rank reads its share of a split's row groups,
tokenizes each document with BOS prepended and packs the tokens back-to-back into (B, T) batches.

Beyond the reference design:
- when the split runs out it starts over at shard 0 (next epoch) instead of hanging;
- no token is dropped: a batch needs B*T+1 tokens and the last one is carried over as the first
  input of the next batch, so consecutive batches tile one stream;
- the state_dict is an exact resume point: where the carried token comes from (epoch, shard, row
  group, document, token). Tokenizing is deterministic, so resuming reproduces the identical stream;
- row groups are numbered consecutively across shards and rank r reads numbers r, r+W, r+2W, ...
  The reference strides within each shard, which starves the higher ranks when shards hold few row
  groups (a small packed corpus has 1-2 per shard);
- a split with fewer row groups than ranks (typically a small corpus's val shard) is shared: every
  rank reads every row group and keeps its documents rank, rank+W, rank+2W, ... of it.
"""

import torch

from nanochat.common import get_dist_info
from nanochat.dataset import open_shard, read_row_group, split_files
from nanochat.token_stream import TokenStream


def _document_stride(files, rank, world_size):
    """(first, step): the documents of each row group this rank keeps. All of them (0, 1) when the ranks
    stride over row groups; every world_size-th one from its rank when they share row groups, because the
    split holds fewer row groups (but at least one) than ranks. Counting stops at world_size, so a large
    corpus opens only its first shard(s)."""
    total = 0
    for f in files:
        total += open_shard(f).num_row_groups
        if total >= world_size:
            return 0, 1
    return (rank, world_size) if total > 0 else (0, 1)


def _check_every_rank_gets_a_document(files, world_size):
    """In the shared layout a rank gets nothing when no row group has more documents than its rank.
    Checked from the metadata, identically on every rank, so that all of them stop (none hangs)."""
    sizes = [pf.metadata.row_group(i).num_rows for pf in map(open_shard, files) for i in range(pf.num_row_groups)]
    if max(sizes) < world_size:
        raise RuntimeError(
            f"rank {max(sizes)} of {world_size} would get no document: the split's {len(sizes)} row group(s) in "
            f"{len(files)} shard(s) are fewer than the ranks, so the ranks split each row group by document, but "
            f"the largest one holds only {max(sizes)} documents. Use more data or fewer ranks (at most {max(sizes)}).")


def iterate_row_groups(files, rank, world_size, start=(0, 0, 0)):
    """Yield (epoch, pq_idx, rg_idx, docs) forever: this rank's row groups, shard after shard, epoch after epoch,
    from its first row group at or after row group min_rg of shard pq_idx (`start` = (epoch, pq_idx, min_rg)).
    Shared row groups (see _document_stride) yield this rank's share of the documents, skipped when empty."""
    first_doc, doc_step = _document_stride(files, rank, world_size)
    shared = doc_step > 1
    if shared:
        _check_every_rank_gets_a_document(files, world_size)
        rank, world_size = 0, 1  # as one rank over the row groups
    epoch, pq_idx, min_rg = start
    offset = sum(open_shard(f).num_row_groups for f in files[:pq_idx])  # number of the shard's first row group
    yielded_this_epoch = (pq_idx, min_rg) != (0, 0)  # a resumed epoch is not checked for emptiness
    while True:
        while pq_idx < len(files):
            pf = open_shard(files[pq_idx])
            rg_idx = min_rg + (rank - offset - min_rg) % world_size  # first index >= min_rg that is ours
            while rg_idx < pf.num_row_groups:
                docs = read_row_group(pf, rg_idx, files[pq_idx])[first_doc::doc_step]
                if docs or not shared:
                    yield epoch, pq_idx, rg_idx, docs
                    yielded_this_epoch = True
                rg_idx += world_size
            # a start past this shard's end carries over into the next shard
            pq_idx, min_rg, offset = pq_idx + 1, max(0, min_rg - pf.num_row_groups), offset + pf.num_row_groups
        if not yielded_this_epoch:
            raise RuntimeError(f"rank {rank} of {world_size} has no row group to read in {len(files)} shard(s) "
                               f"({offset} row groups): use more data or fewer ranks.")
        epoch, pq_idx, min_rg, offset, yielded_this_epoch = epoch + 1, 0, 0, 0, False


def _start_position(state, rank, world_size, files):
    """(epoch, pq_idx, min_rg, doc_idx, token_idx) to start from. A state saved by this rank with this world
    size resumes exactly; any other (e.g. the reference's {"pq_idx", "rg_idx"}, or another rank's) resumes
    one full stride past the saved row group, so that no row group is read twice."""
    if state is None:
        return 0, 0, 0, 0, 0
    if state.get("rank") == rank and state.get("world_size") == world_size and "doc_idx" in state:
        return state["epoch"], state["pq_idx"], state["rg_idx"], state["doc_idx"], state["token_idx"]
    epoch, pq_idx = state.get("epoch", 0), state["pq_idx"]
    if pq_idx >= len(files):
        return epoch + 1, 0, 0, 0, 0
    offset = sum(open_shard(f).num_row_groups for f in files[:pq_idx])
    saved = offset + state["rg_idx"]
    shared = _document_stride(files, rank, world_size)[1] > 1
    stride = 1 if shared else world_size  # shared: every rank reads every row group
    return epoch, pq_idx, (saved // stride + 1) * stride - offset, 0, 0


def tokenizing_distributed_data_loader_with_state(B, T, split, tokenizer_threads=4, tokenizer_batch_size=128,
                                                  device="cuda", resume_state_dict=None, tokenizer=None,
                                                  rank=None, world_size=None, data_dir=None):
    """Infinite iterator of (inputs, targets, state_dict): int64 (B, T) tensors on `device` and a JSON-able dict;
    passing that dict back as `resume_state_dict` continues with exactly the batch that would have come next.
    `rank`/`world_size` default to the torchrun environment."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if B <= 0 or T <= 0:
        raise ValueError(f"B and T must be positive, got B={B}, T={T}")
    if rank is None or world_size is None:
        _, env_rank, _, env_world = get_dist_info()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if tokenizer is None:
        from nanochat.tokenizer import get_tokenizer
        tokenizer = get_tokenizer()
    bos = tokenizer.get_bos_token_id()
    files = split_files(split, data_dir)
    epoch, pq_idx, min_rg, doc_idx, token_idx = _start_position(resume_state_dict, rank, world_size, files)
    # the state's doc_idx counts within the whole row group; a shared row group's docs are only ours
    first_doc, doc_step = _document_stride(files, rank, world_size)

    def document_batches():
        """(origins, docs): up to tokenizer_batch_size documents of one row group, from the resume point on."""
        skip_docs = max(0, -((first_doc - doc_idx) // doc_step))  # our documents before the first one >= doc_idx
        for *row_group, docs in iterate_row_groups(files, rank, world_size, start=(epoch, pq_idx, min_rg)):
            for start in range(skip_docs, len(docs), tokenizer_batch_size):
                chunk = docs[start:start + tokenizer_batch_size]
                yield [(*row_group, first_doc + i * doc_step) for i in range(start, start + len(chunk))], chunk
            skip_docs = 0

    batches = document_batches()
    stream = TokenStream()  # tokenized documents; each origin is (epoch, pq_idx, rg_idx, doc_idx)
    skip_tokens = token_idx  # the resumed document starts part-way in
    use_cuda = torch.device(device).type == "cuda"
    needed = B * T + 1
    # CUDA: one pinned staging buffer, refilled once the copy out of it is done (`copied`)
    scratch, copied = (torch.empty(needed, dtype=torch.long, pin_memory=True), None) if use_cuda else (None, None)
    while True:
        while stream.available < needed:
            origins, docs = next(batches)
            for origin, ids in zip(origins, tokenizer.encode(docs, prepend=bos, num_threads=tokenizer_threads)):
                stream.push(ids, origin, offset=skip_tokens)
                skip_tokens = 0
        tokens = stream.take(B * T)
        tokens.append(stream.peek())  # the carried token: next batch's first input
        e, p, r, d = stream.head.origin
        state_dict = {"epoch": e, "pq_idx": p, "rg_idx": r, "doc_idx": d, "token_idx": stream.head.offset,
                      "rank": rank, "world_size": world_size}
        if use_cuda:
            if copied is not None:
                copied.synchronize()  # the previous batch may still be on its way to the GPU
            scratch.numpy()[:] = tokens
        else:  # elsewhere the returned tensors can be this host tensor: a fresh one, or we'd overwrite them
            scratch = torch.tensor(tokens, dtype=torch.long)
        # any device (CUDA, MPS, ...); pinned memory makes the copy asynchronous on CUDA only
        inputs = scratch[:-1].view(B, T).to(device=device, non_blocking=use_cuda)
        targets = scratch[1:].view(B, T).to(device=device, non_blocking=use_cuda)
        if use_cuda:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(inputs.device))
        yield inputs, targets, state_dict


def tokenizing_distributed_data_loader(*args, **kwargs):
    """Same as tokenizing_distributed_data_loader_with_state, yielding only (inputs, targets)."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state(*args, **kwargs):
        yield inputs, targets
