"""
Conversations -> token batches for the chat stages.

- `PackedConversations` (midtraining): conversations rendered back to back into one token stream,
  cut into (B, T) windows like the pretraining loader; every token is trained on.
- `PaddedConversations` (SFT): one conversation per row, padded; only assistant tokens are targets.

Both walk a dataset rank-strided (rank, rank+world, ...), skip and count rows that fail to render
(warning with the row), and resume exactly from their `state_dict()` passed back as `state=`.
"""

import torch

from nanochat.token_stream import TokenStream

ASSISTANT_END = "<|assistant_end|>"
MAX_WARNINGS = 5


class _RowWalker:
    """Rank-strided walk over a dataset, rendering each row; bad rows are skipped and counted."""

    def __init__(self, dataset, tokenizer, rank, world_size, max_tokens, name):
        if len(dataset) == 0:
            raise ValueError(f"{name}: the dataset is empty; check that its tasks loaded any rows")
        if world_size > len(dataset):
            raise ValueError(f"{name}: {len(dataset)} conversations cannot be shared by {world_size} ranks")
        self.dataset, self.tokenizer = dataset, tokenizer
        self.rank, self.world_size = rank, world_size
        self.max_tokens, self.name = max_tokens, name
        self.skipped = 0

    def render(self, index):
        """(ids, mask) of row `index`, or None if the row is malformed."""
        try:
            return self.tokenizer.render_conversation(self.dataset[index], max_tokens=self.max_tokens)
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            self.skipped += 1
            if self.skipped <= MAX_WARNINGS:
                print(f"Warning: {self.name} row {index} skipped ({type(e).__name__}: {e})")
            return None


class PackedConversations:
    """Midtraining batches: (inputs int32 (B,T), targets int64 (B,T)) from B*T+1 consecutive stream tokens; the
    last target of a batch is the first input of the next, so no token is dropped. `last_step` turns True on
    the batch during which the cursor wraps past the end of the dataset (`stop_at_epoch_end`) or on the
    `num_iterations`-th batch. `progress` is in [0, 1] and never decreases."""

    def __init__(self, dataset, tokenizer, batch_size, seq_len, rank=0, world_size=1, device="cpu",
                 num_iterations=-1, stop_at_epoch_end=True, max_tokens=2048, state=None, name="mid data"):
        self.walker = _RowWalker(dataset, tokenizer, rank, world_size, max_tokens, name)
        self.B, self.T, self.device = batch_size, seq_len, device
        self.num_iterations, self.stop_at_epoch_end = num_iterations, stop_at_epoch_end
        state = state or {}
        # the stream restarts at conversation `head_cursor`, `head_offset` tokens in
        self.cursor = state.get("head_cursor", rank)
        self.head_offset = state.get("head_offset", 0)
        self.iterations = state.get("iterations", 0)
        self.epochs = state.get("epochs", 0)
        self.progress = state.get("progress", 0.0)
        self.last_step = False
        self.stream = TokenStream()  # rendered conversations; each origin is (cursor, epochs before it)

    def state_dict(self):
        """Small JSON-able position: where the next batch's first token comes from."""
        if self.stream.pieces:
            (head_cursor, epochs), head_offset = self.stream.head.origin, self.stream.head.offset
        else:
            head_cursor, head_offset, epochs = self.cursor, self.head_offset, self.epochs
        return {"head_cursor": head_cursor, "head_offset": head_offset, "iterations": self.iterations,
                "epochs": epochs, "progress": self.progress}

    def __iter__(self):
        return self

    def _fill(self, needed):
        size = len(self.walker.dataset)
        while self.stream.available < needed:
            cursor, epochs = self.cursor, self.epochs
            rendered = self.walker.render(cursor)
            self.cursor += self.walker.world_size
            if self.cursor >= size:
                self.cursor -= size
                self.epochs += 1
                self.last_step = self.last_step or self.stop_at_epoch_end
            if rendered is not None:  # a resumed stream starts part-way into its first conversation
                self.stream.push(rendered[0], (cursor, epochs), offset=self.head_offset)
                self.head_offset = 0

    def __next__(self):
        self._fill(self.B * self.T + 1)
        tokens = self.stream.take(self.B * self.T)
        tokens.append(self.stream.peek())  # the last target is the next batch's first input
        self.iterations += 1
        if self.num_iterations > 0:
            self.last_step = self.last_step or self.iterations >= self.num_iterations
            progress = self.iterations / self.num_iterations
        else:
            progress = self.cursor / len(self.walker.dataset) + self.epochs
        self.progress = max(self.progress, min(progress, 1.0))
        buf = torch.tensor(tokens, dtype=torch.long)
        inputs = buf[:-1].view(self.B, self.T).to(device=self.device, dtype=torch.int32)
        targets = buf[1:].view(self.B, self.T).to(device=self.device)
        return inputs, targets


class PaddedConversations:
    """SFT batches, forever: `batch_size` rank-strided rows each, collated by `collate_padded` (a batch may
    span an epoch boundary). `consumed` counts the rows this rank has drawn; it is the whole resume state."""

    def __init__(self, dataset, tokenizer, batch_size, rank=0, world_size=1, device="cpu",
                 max_tokens=2048, state=None, name="sft data"):
        self.walker = _RowWalker(dataset, tokenizer, rank, world_size, max_tokens, name)
        self.batch_size, self.device = batch_size, device
        self.pad_id = tokenizer.encode_special(ASSISTANT_END)
        self.consumed = (state or {}).get("consumed", 0)
        self.rows_per_epoch = len(range(rank, len(dataset), world_size))

    def state_dict(self):
        return {"consumed": self.consumed}

    @property
    def epoch(self):
        return self.consumed // self.rows_per_epoch

    def __iter__(self):
        return self

    def __next__(self):
        batch = []
        bad_in_a_row = 0
        while len(batch) < self.batch_size:
            local = self.consumed % self.rows_per_epoch
            self.consumed += 1
            rendered = self.walker.render(self.walker.rank + local * self.walker.world_size)
            if rendered is None:
                bad_in_a_row += 1
                if bad_in_a_row >= self.rows_per_epoch:
                    raise ValueError(f"{self.walker.name}: every row failed to render; nothing to train on")
                continue
            bad_in_a_row = 0
            batch.append(rendered)
        inputs, targets = collate_padded(batch, self.pad_id)
        return inputs.to(self.device), targets.to(self.device)


def collate_padded(batch, pad_id):
    """[(ids, mask), ...] -> (inputs, targets), both int64 (B, max_len-1): ids[:-1] padded with `pad_id`, and
    ids[1:] with -1 where mask[1:] == 0 and on padding, so only the tokens a mask marks (the assistant's in
    SFT, the sampled ones in RL) are trained on."""
    width = max((len(ids) for ids, _ in batch), default=0) - 1
    if width < 1:
        raise ValueError("every sequence in the batch is shorter than 2 tokens")
    inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width), -1, dtype=torch.long)
    for i, (ids, mask) in enumerate(batch):
        if len(ids) != len(mask):
            raise ValueError(f"sequence {i} has {len(ids)} tokens but {len(mask)} mask entries")
        ids_t = torch.tensor(ids, dtype=torch.long)
        mask_t = torch.tensor(mask[1:], dtype=torch.long)
        row_targets = ids_t[1:].clone()
        row_targets[mask_t == 0] = -1
        inputs[i, :len(ids) - 1] = ids_t[:-1]
        targets[i, :len(ids) - 1] = row_targets
    return inputs, targets


def nonempty_tasks(named_tasks, label):
    """Print a mixture's composition and return its non-empty tasks; an all-empty mixture is an error."""
    from nanochat.common import print0
    print0(f"{label} mixture:")
    for name, task in named_tasks:
        print0(f"  {name:<28} {len(task):>9,} conversations")
    tasks = [task for _, task in named_tasks if len(task) > 0]
    if not tasks:
        raise ValueError(f"the {label} mixture is empty: none of its tasks has any conversation "
                         f"({', '.join(name for name, _ in named_tasks)})")
    return tasks
