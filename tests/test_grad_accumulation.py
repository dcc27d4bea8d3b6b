"""
Gradient accumulation in every training stage: N micro-batches accumulated into one step train the
same model as one step on the N micro-batches stacked into one batch (the loss of a step is the mean
over its whole batch, whatever the micro-batch size). Each pair of runs differs only in
device_batch_size, with the same total batch, and the saved checkpoints are compared.
"""

import re

import pytest

from stage_setup import max_relative_difference, read_checkpoint, save_model_checkpoint, write_identity
from test_base_train import TINY, train_env  # noqa: F401 - the fixture is used by name

TOLERANCE = 1e-5  # float32 sums in another order
ADAMW_HELD = ("transformer.wte.weight", "lm_head.weight")  # the tensors no Newton-Schulz touches


def adamw_held(state):
    return {k: state[k] for k in ADAMW_HELD}


def grad_norms(log):
    return [float(x) for x in re.findall(r"grad norm: ([0-9.]+)", log)]


def test_base_train_accumulation_equals_one_big_batch(train_env, capsys):  # noqa: F811
    """From scratch the projections start at zero, and after the first steps bf16 Newton-Schulz turns
    float-order noise into visible differences; so the parameters are compared after step 1 and the
    logged gradient norm (what the clip acts on) on every step."""
    from scripts.base_train import main
    common = TINY + ["--num_iterations=3", "--save_every=1", "--total_batch_size=128", "--eval_every=-1"]
    main(common + ["--device_batch_size=1", "--model_tag=accumulated"])
    log = capsys.readouterr().out
    assert "gradient accumulation steps: 2" in log
    main(common + ["--device_batch_size=2", "--model_tag=stacked"])
    stacked_log = capsys.readouterr().out
    assert "gradient accumulation steps: 1" in stacked_log
    a, _ = read_checkpoint(train_env, "base_checkpoints", "accumulated", 1)
    b, _ = read_checkpoint(train_env, "base_checkpoints", "stacked", 1)
    assert max_relative_difference(adamw_held(a), adamw_held(b)) < TOLERANCE
    assert max_relative_difference(a, b) < 1e-2  # Muon's matrices: bf16 Newton-Schulz on some CPUs
    assert grad_norms(log) == pytest.approx(grad_norms(stacked_log), rel=1e-3) and len(grad_norms(log)) == 3


def accumulated_and_stacked(base_dir, main, source_dir, args, step):
    main(args + ["--device_batch_size=1"])
    accumulated, _ = read_checkpoint(base_dir, source_dir, "d1", step)
    main(args + ["--device_batch_size=2"])
    stacked, _ = read_checkpoint(base_dir, source_dir, "d1", step)
    return accumulated, stacked



def test_mid_train_accumulation_equals_one_big_batch(data_pack, base_dir, byte_tokenizer, capsys):
    """One step. The AdamW-held tensors see only float32 math: they agree to ~4e-8, and a missing
    division by the steps moves them 3.5e-6 (Adam's first step is scale-free but for its eps), a
    micro-batch dropped from the sum 0.25. Muon's matrices go through Newton-Schulz, in bf16 on
    CPUs with native bf16, where float-order noise in the gradient can flip a rounding (1e-3 seen
    after three steps), so they get bf16's bound."""
    from scripts.mid_train import main
    save_model_checkpoint(base_dir, "base_checkpoints", byte_tokenizer, seq_len=32)
    write_identity(base_dir)
    args = ["--device_type=cpu", "--max_seq_len=32", "--total_batch_size=64", "--eval_every=-1", "--num_iterations=1"]
    a, b = accumulated_and_stacked(base_dir, main, "mid_checkpoints", args, 1)
    log = capsys.readouterr().out
    assert "gradient accumulation steps: 2" in log and "gradient accumulation steps: 1" in log
    assert max_relative_difference(adamw_held(a), adamw_held(b)) < 1e-6
    assert max_relative_difference(a, b) < 1e-2


def test_chat_sft_accumulation_equals_one_big_batch(data_pack, base_dir, byte_tokenizer, capsys):
    """Conversations hold different numbers of assistant tokens, so averaging per-micro-batch means
    would weight them unevenly (~0.2 off here); the loss is normalised by the step's valid tokens.
    Rows long enough that the step has assistant tokens in both micro-batches; one step, because the
    bf16 Newton-Schulz turns float-order noise (~4e-4 after one step) into larger drift later."""
    from scripts.chat_sft import main
    save_model_checkpoint(base_dir, "mid_checkpoints", byte_tokenizer, seq_len=256)
    write_identity(base_dir)
    args = ["--device_type=cpu", "--max_seq_len=256", "--target_examples_per_step=2", "--num_iterations=1",
            "--eval_every=-1", "--eval_metrics_every=-1", "--init_lr_frac=1.0"]
    a, b = accumulated_and_stacked(base_dir, main, "chatsft_checkpoints", args, 1)
    log = capsys.readouterr().out
    assert "Gradient accumulation steps: 2" in log and "Gradient accumulation steps: 1" in log
    assert max_relative_difference(a, b) < 1e-2
