"""Conversation batching for mid (packed) and SFT (padded), plus mixture checks."""

import pytest
import torch

from nanochat.chat_data import PackedConversations, PaddedConversations, collate_padded, nonempty_tasks


def conv(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


DATA = [conv(f"question {i}", "answer " * (i % 5 + 1)) for i in range(23)]


def stream_of(tokenizer, rows):
    out = []
    for row in rows:
        out.extend(tokenizer.render_conversation(row)[0])
    return out


def test_packed_batches_are_the_stream_without_dropping_tokens(byte_tokenizer):
    loader = PackedConversations(DATA, byte_tokenizer, batch_size=2, seq_len=16)
    stream = stream_of(byte_tokenizer, DATA * 3)
    for i in range(6):
        x, y = next(loader)
        assert x.dtype == torch.int32 and y.dtype == torch.int64 and x.shape == (2, 16)
        assert x.flatten().tolist() == stream[i * 32:(i + 1) * 32]
        assert y.flatten().tolist() == stream[i * 32 + 1:(i + 1) * 32 + 1]  # last target = next first input


def test_packed_ranks_take_strided_rows(byte_tokenizer):
    loader = PackedConversations(DATA, byte_tokenizer, batch_size=1, seq_len=8, rank=1, world_size=2)
    x, _ = next(loader)
    assert x.flatten().tolist() == stream_of(byte_tokenizer, DATA[1::2])[:8]


def test_packed_epoch_end_sets_last_step_and_progress_is_monotone(byte_tokenizer):
    loader = PackedConversations(DATA, byte_tokenizer, batch_size=1, seq_len=64)
    seen = []
    while not loader.last_step:
        next(loader)
        seen.append(loader.progress)
        assert len(seen) < 1000
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_packed_resume_from_state_is_exact(byte_tokenizer):
    a = PackedConversations(DATA, byte_tokenizer, batch_size=2, seq_len=13)
    for _ in range(5):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(7)]
    b = PackedConversations(DATA, byte_tokenizer, batch_size=2, seq_len=13, state=state)
    for (xa, ya), (xb, yb) in zip(expected, [next(b) for _ in range(7)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_rows_are_skipped_and_counted(byte_tokenizer, capsys):
    bad = {"messages": [{"role": "assistant", "content": "I speak first"}]}
    rows = [DATA[0], bad, DATA[1]]
    loader = PackedConversations(rows, byte_tokenizer, batch_size=1, seq_len=8)
    for _ in range(20):
        next(loader)
    assert loader.walker.skipped >= 1
    assert "row 1 skipped" in capsys.readouterr().out


def test_empty_dataset_is_a_clear_error(byte_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        PackedConversations([], byte_tokenizer, batch_size=1, seq_len=8, name="mid train")


def test_collate_pads_inputs_and_masks_targets():
    batch = [([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6], [0, 1])]
    inputs, targets = collate_padded(batch, pad_id=99)
    assert inputs.tolist() == [[1, 2, 3], [5, 99, 99]]
    assert targets.tolist() == [[-1, 3, 4], [6, -1, -1]]


def test_padded_rows_supervise_only_assistant_tokens(byte_tokenizer):
    loader = PaddedConversations(DATA[:3], byte_tokenizer, batch_size=3)
    x, y = next(loader)
    ids, mask = byte_tokenizer.render_conversation(DATA[0])
    assert x[0, :len(ids) - 1].tolist() == ids[:-1]
    supervised = [t for t, m in zip(ids[1:], mask[1:]) if m]
    assert [t for t in y[0].tolist() if t >= 0] == supervised
    assert byte_tokenizer.decode(supervised).startswith("answer")


def test_padded_batches_span_epochs_and_resume(byte_tokenizer):
    a = PaddedConversations(DATA, byte_tokenizer, batch_size=4, rank=0, world_size=2)  # 12 rows per epoch
    for _ in range(4):
        next(a)
    assert a.epoch == 1
    state = a.state_dict()
    xa, ya = next(a)
    xb, yb = next(PaddedConversations(DATA, byte_tokenizer, batch_size=4, rank=0, world_size=2, state=state))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_nonempty_tasks_drops_empty_and_refuses_all_empty():
    assert nonempty_tasks([("a", [1]), ("b", [])], "train") == [[1]]
    with pytest.raises(ValueError, match="mixture is empty"):
        nonempty_tasks([("identity", [])], "train")
