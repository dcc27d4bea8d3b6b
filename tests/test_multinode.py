"""Two "nodes" (one process each, separate base directories, c10d rendezvous on 127.0.0.1) train exactly
like one node with two processes, and each node writes only what its global rank owns."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from test_base_train import REPO, train_env  # noqa: F401  (fixture)

ARGS = ["--device_type=cpu", "--depth=2", "--max_seq_len=32", "--device_batch_size=2", "--total_batch_size=128",
        "--num_iterations=4", "--eval_every=-1", "--eval_tokens=128", "--core_metric_every=-1", "--sample_every=-1"]
TRAIN = ["-m", "scripts.base_train", "--"]  # the real script and data loader, each node reading its own shards


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(base_dir):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, NANOCHAT_BASE_DIR=base_dir)


def node_command(node_rank, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--nproc_per_node=1"] + TRAIN


@pytest.mark.slow  # three torchrun launches of base_train
def test_two_nodes_match_one_node_with_two_processes(train_env, tmp_path):  # noqa: F811
    one_node = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
                              + TRAIN + ARGS + ["--model_tag=one_node"], cwd=REPO, env=env_for(train_env),
                              capture_output=True, text=True, timeout=600)
    assert one_node.returncode == 0, one_node.stderr[-3000:]

    # no shared file system: each node has its own copy of the tokenizer and the shards
    node_dirs = [str(tmp_path / f"node{r}") for r in range(2)]
    for d in node_dirs:
        shutil.copytree(os.path.join(train_env, "tokenizer"), os.path.join(d, "tokenizer"))
        shutil.copytree(os.path.join(train_env, "base_data"), os.path.join(d, "base_data"))
    port = free_port()
    nodes = [subprocess.Popen(node_command(r, port) + ARGS + ["--model_tag=two_nodes"], cwd=REPO,
                              env=env_for(node_dirs[r]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:]

    # global rank 0 alone writes the model, the meta and the report; every rank writes its own shards
    ck = [os.path.join(d, "base_checkpoints", "two_nodes") for d in node_dirs]
    writers = [i for i in range(2) if os.path.exists(os.path.join(ck[i], "model_000004.pt"))]
    assert len(writers) == 1, writers
    w, other = writers[0], 1 - writers[0]
    assert os.path.exists(os.path.join(ck[w], "meta_000004.json"))
    assert not os.path.exists(os.path.join(ck[other], "meta_000004.json"))
    assert sorted(os.listdir(ck[w])) == sorted(["model_000004.pt", "meta_000004.json", "optim_000004_rank0.pt",
                                                "rng_000004_rank0.pt"])
    assert sorted(os.listdir(ck[other])) == ["optim_000004_rank1.pt", "rng_000004_rank1.pt"]
    assert os.path.isdir(os.path.join(node_dirs[w], "report")) and not os.path.exists(
        os.path.join(node_dirs[other], "report"))
    assert outputs[other].count("step 0000") == 0 and outputs[w].count("step 0000") == 4  # rank-0 printing only

    a = torch.load(os.path.join(train_env, "base_checkpoints", "one_node", "model_000004.pt"), map_location="cpu")
    b = torch.load(os.path.join(ck[w], "model_000004.pt"), map_location="cpu")
    max_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |parameter difference|, 2 nodes x 1 process vs 1 node x 2 processes: {max_diff:.3e}")
    assert max_diff <= 1e-6
