"""scripts.base_train / scripts.base_loss end to end on CPU with a byte tokenizer and tiny shards."""

import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer, save_token_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the cat sat on a mat while the dog ran to the park and a bird sang in the tall green tree "
         "near an old house by the river where children played every sunny day").split()


def even_vocab_tokenizer():
    """Bytes + one merge + the specials: vocab 266, so DistAdamW shards the embeddings over 2 ranks."""
    import tiktoken
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"th"] = 256
    specials = {name: 257 + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="bytes_th", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return RustBPETokenizer(enc, "<|bos|>")


def write_shards(data_dir, num_shards=2, docs_per_shard=60, row_group_size=10, seed=0):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(seed)
    os.makedirs(data_dir, exist_ok=True)
    for shard in range(num_shards):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(docs_per_shard)]
        pq.write_table(pa.table({"text": docs}), os.path.join(data_dir, f"shard_{shard:05d}.parquet"),
                       row_group_size=row_group_size)


@pytest.fixture
def train_env(base_dir):
    tok = even_vocab_tokenizer()
    tok_dir = os.path.join(base_dir, "tokenizer")
    tok.save(tok_dir)
    save_token_bytes(tok, tok_dir)
    write_shards(os.path.join(base_dir, "base_data"))
    return base_dir


TINY = ["--device_type=cpu", "--depth=2", "--max_seq_len=64", "--device_batch_size=2", "--total_batch_size=256",
        "--eval_tokens=256", "--core_metric_every=-1", "--sample_every=-1"]


def test_exact_resume_is_bit_identical(train_env, tmp_path, monkeypatch):
    from scripts.base_train import main
    from stage_setup import metric_runs, read_checkpoint
    main(TINY + ["--num_iterations=12", "--save_every=6", "--eval_every=6"])
    ck = os.path.join(train_env, "base_checkpoints", "d2")
    assert os.path.exists(os.path.join(ck, "model_000006.pt"))
    assert os.path.exists(os.path.join(ck, "optim_000012_rank0.pt"))
    [full] = metric_runs(train_env, "base-model-training", "train_loss")
    assert full[11] < full[0] - 0.5  # it learns

    # a run that was killed after checkpoint 6: a fresh base dir holding only that checkpoint
    killed = tmp_path / "killed"
    shutil.copytree(train_env, killed, ignore=shutil.ignore_patterns("*_000012*", "report"))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(killed))
    main(TINY + ["--num_iterations=12", "--save_every=6", "--eval_every=6", "--resume_from_step=6"])
    [resumed] = metric_runs(str(killed), "base-model-training", "train_loss")
    assert sorted(resumed) == list(range(6, 12))
    for step in range(6, 12):
        assert resumed[step] == full[step], step  # bit for bit
    a, meta_a = read_checkpoint(train_env, "base_checkpoints", "d2", 12)
    b, meta_b = read_checkpoint(str(killed), "base_checkpoints", "d2", 12)
    assert meta_b["val_bpb"] == meta_a["val_bpb"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_missing_step_lists_existing_ones(train_env):
    from scripts.base_train import main
    main(TINY + ["--num_iterations=2"])
    with pytest.raises(FileNotFoundError, match=r"step 5 .*available steps: \[2\]"):
        main(TINY + ["--num_iterations=4", "--resume_from_step=5"])


def test_bad_batch_and_depth_settings_explain_themselves(train_env):
    from scripts.base_train import main
    with pytest.raises(ValueError, match=r"total_batch_size=100 is not divisible by .* = 2\*64\*1 = 128"):
        main(TINY + ["--total_batch_size=100"])
    with pytest.raises(ValueError, match="nearest valid depths: 4 or 6"):
        main(TINY + ["--depth=5"])


def test_base_loss_reports_train_and_val_bpb(train_env):
    from scripts.base_loss import main as base_loss
    from scripts.base_train import main as base_train
    from stage_setup import read_checkpoint
    base_train(TINY + ["--num_iterations=4"])
    _, trained = read_checkpoint(train_env, "base_checkpoints", "d2", 4)
    out = base_loss(["--device_type=cpu", "--device_batch_size=2", "--split_tokens=256"])
    assert set(out["bpb"]) == {"train", "val"}
    assert 0 < out["bpb"]["val"] < 10
    assert out["bpb"]["val"] == pytest.approx(trained["val_bpb"], rel=1e-5)  # same model, same val data
    assert len(out["samples"]) == 7
    with open(os.path.join(train_env, "report", "base-model-loss.md")) as f:
        assert "val bpb" in f.read()


def run_helper(args, nproc, base_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, NANOCHAT_BASE_DIR=base_dir)
    helper = os.path.join(REPO, "tests", "dist_train_helper.py")
    if nproc == 1:
        cmd = [sys.executable, helper] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", helper,
               "--"] + args
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


def test_two_gloo_ranks_match_one_process_with_double_accumulation(train_env):
    from nanochat.checkpoint_manager import load_checkpoint
    common = ["--device_type=cpu", "--depth=2", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=128",
              "--num_iterations=5", "--eval_every=-1", "--eval_tokens=128", "--core_metric_every=-1",
              "--sample_every=-1", "--grad_clip=0.0"]
    single = run_helper(common + ["--model_tag=single"], 1, train_env)
    assert "gradient accumulation steps: 2" in single
    double = run_helper(common + ["--model_tag=ddp"], 2, train_env)
    assert "gradient accumulation steps: 1" in double and "DistMuon" in double
    ck = os.path.join(train_env, "base_checkpoints")
    assert os.path.exists(os.path.join(ck, "ddp", "optim_000005_rank1.pt"))  # every rank's shard is saved
    a, _, meta_a = load_checkpoint(os.path.join(ck, "single"), 5, "cpu")
    b, _, meta_b = load_checkpoint(os.path.join(ck, "ddp"), 5, "cpu")
    rel = {key: ((a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)).item() for key in a}
    print(f"max relative parameter difference, 2 ranks vs 1 process: {max(rel.values()):.3e}")
    assert max(rel.values()) < 1e-5, rel
    assert meta_a["val_bpb"] == pytest.approx(meta_b["val_bpb"], rel=1e-5)


def test_two_gloo_ranks_resume_exactly(train_env):
    """Kill-and-resume under torchrun: every rank gets back its own optimizer shard and loader position."""
    import shutil
    import torch
    common = ["--device_type=cpu", "--depth=2", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=128",
              "--num_iterations=6", "--eval_every=-1", "--eval_tokens=128", "--core_metric_every=-1",
              "--sample_every=-1"]
    ck = os.path.join(train_env, "base_checkpoints")
    run_helper(common + ["--model_tag=full", "--save_every=3"], 2, train_env)
    os.makedirs(os.path.join(ck, "resumed"))
    for name in os.listdir(os.path.join(ck, "full")):
        if "_000003" in name:
            shutil.copy(os.path.join(ck, "full", name), os.path.join(ck, "resumed", name))
    run_helper(common + ["--model_tag=resumed", "--resume_from_step=3"], 2, train_env)
    full = torch.load(os.path.join(ck, "full", "model_000006.pt"), map_location="cpu")
    resumed = torch.load(os.path.join(ck, "resumed", "model_000006.pt"), map_location="cpu")
    assert all(torch.equal(full[key], resumed[key]) for key in full)


def test_torch_compile_on_cpu_matches_eager(train_env):
    from scripts.base_train import main
    from stage_setup import metric_runs
    main(TINY + ["--num_iterations=3", "--eval_every=-1", "--model_tag=eager"])
    main(TINY + ["--num_iterations=3", "--eval_every=-1", "--model_tag=compiled", "--compile=True"])
    eager, compiled = metric_runs(train_env, "base-model-training", "train_loss")
    assert sorted(compiled) == [0, 1, 2]
    for step in range(3):
        assert compiled[step] == pytest.approx(eager[step], rel=1e-3)
