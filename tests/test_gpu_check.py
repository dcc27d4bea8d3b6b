"""
dev/gpu_check.sh, run the way a user runs it: its CPU mode end to end (every step the GPU run takes,
at toy sizes), and the refusals a GPU machine that is not ready gets before anything runs.
"""

import os
import re
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_check(*args, timeout=900):
    # the venv's python first on PATH, as `source .venv/bin/activate` leaves it
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", "dev/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cpu_mode_runs_every_step_and_summarises(tmp_path):
    out = gpu_check("--cpu")
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    for stage in ("bench_train", "bench_inference", "dataset", "tok_train", "base_train", "engine_check"):
        assert f"<== {stage} finished" in log, stage
    summary = log[log.index("==> summary"):]
    assert re.search(r"^  nanochat +[0-9,]+ tok/s", summary, re.M) and re.search(r"^  original +[0-9,]+ tok/s",
                                                                                   summary, re.M)
    assert "ours / original: " in summary
    assert re.search(r"batch1 +ours +[0-9,.]+ tok/s", summary) and re.search(r"batch2 +ours", summary)
    assert "greedy tokens identical (Engine, original structure, GPT.generate): True" in summary
    losses = re.search(r"base_train, 20 steps: loss ([0-9.]+) -> ([0-9.]+) \(falls\)", summary)
    first, last = map(float, losses.groups())
    assert last < first
    assert "Engine vs GPT.generate on the trained checkpoint: match" in summary
    assert summary.rstrip().endswith("all checks passed")
    # the temporary base dir is gone
    base = re.search(r"base dir: (\S+)", log).group(1)
    assert not os.path.exists(base)


def test_gpu_mode_without_cuda_stops_before_any_stage():
    if torch.cuda.is_available():
        return  # this machine has what the check is about
    out = gpu_check(timeout=120)
    assert out.returncode != 0
    assert "CUDA is not available" in out.stderr + out.stdout
    assert "==> bench_train" not in out.stdout


def test_wheels_folder_without_wheels_is_refused(tmp_path):
    out = gpu_check("--wheels", str(tmp_path), timeout=60)
    assert out.returncode == 2 and f"no .whl files in {tmp_path}" in out.stderr


def test_a_python_without_the_tokenizer_says_how_to_bring_it(tmp_path):
    # a python whose rustbpe cannot be imported, as on a GPU machine without the wheel
    (tmp_path / "rustbpe.py").write_text("raise ImportError('No module named rustbpe')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    out = subprocess.run(["bash", "dev/gpu_check.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "No module named rustbpe" in out.stderr and "--wheels DIR" in out.stderr
