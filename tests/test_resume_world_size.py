"""Resuming after a change in the number of ranks is refused with one clear error in every training stage."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_base_train import REPO, train_env  # noqa: F401  (fixture)

MESSAGE = "was written by {saved} rank(s) but this run has {now}"
BASE = ["--device_type=cpu", "--depth=2", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=128",
        "--eval_every=-1", "--eval_tokens=128", "--core_metric_every=-1", "--sample_every=-1"]


def base_train(args, nproc, base_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, NANOCHAT_BASE_DIR=base_dir)
    helper = os.path.join(REPO, "tests", "dist_train_helper.py")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    out = subprocess.run([sys.executable] + launcher + [helper, "--"] + BASE + args, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.slow  # four torchrun/base_train launches
@pytest.mark.parametrize("saved,now", [(2, 1), (1, 2)])
def test_base_train_refuses_a_different_world_size(train_env, saved, now):  # noqa: F811
    rc, out = base_train(["--num_iterations=2", "--model_tag=ws"], saved, train_env)
    assert rc == 0, out[-3000:]
    rc, out = base_train(["--num_iterations=4", "--model_tag=ws", "--resume_from_step=2"], now, train_env)
    assert rc != 0 and MESSAGE.format(saved=saved, now=now) in out, out[-3000:]
    assert f"Resume with {saved} process(es) in total" in out
    assert not os.path.exists(os.path.join(train_env, "base_checkpoints", "ws", "model_000004.pt"))


def as_if_two_ranks_saved(checkpoint_dir, step):
    """The files a 2-rank run leaves: rank 1's shard and RNG state next to rank 0's, world_size 2 in meta."""
    for kind in ("optim", "rng"):
        shutil.copy(os.path.join(checkpoint_dir, f"{kind}_{step:06d}_rank0.pt"),
                    os.path.join(checkpoint_dir, f"{kind}_{step:06d}_rank1.pt"))
    meta_path = os.path.join(checkpoint_dir, f"meta_{step:06d}.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["world_size"] = 2
    meta["dataloader_state_dicts"] = meta["dataloader_state_dicts"] * 2
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def test_mid_train_and_chat_sft_refuse_with_the_same_error(data_pack, base_dir, byte_tokenizer):
    import test_chat_sft
    import test_mid_train
    test_mid_train.run(base_dir, byte_tokenizer, ["--num_iterations=2", "--eval_every=-1"])
    as_if_two_ranks_saved(os.path.join(base_dir, "mid_checkpoints", "d1"), 2)
    with pytest.raises(ValueError, match=re.escape(MESSAGE.format(saved=2, now=1))):
        test_mid_train.run(base_dir, byte_tokenizer, ["--num_iterations=4", "--eval_every=-1", "--resume_from_step=2"])

    test_chat_sft.tiny_mid(base_dir, byte_tokenizer)
    test_chat_sft.run(["--num_iterations=2", "--eval_every=-1", "--max_seq_len=64"])
    as_if_two_ranks_saved(os.path.join(base_dir, "chatsft_checkpoints", "d1"), 2)
    with pytest.raises(ValueError, match=re.escape(MESSAGE.format(saved=2, now=1))):
        test_chat_sft.run(["--num_iterations=4", "--eval_every=-1", "--max_seq_len=64", "--resume_from_step=2"])
