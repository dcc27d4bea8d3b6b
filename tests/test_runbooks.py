"""Runbooks: they parse, lint clean, run the reference's stages in order, and stop loudly on failure."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNBOOKS = ["speedrun.sh", "run1000.sh", "dev/runcpu.sh", "dev/runbook_lib.sh", "dev/gpu_check.sh"]
IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
TORCHRUN = "torchrun --standalone --nproc_per_node=8"


def clean_env(base_dir, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NANOCHAT_") and k not in ("FORCE", "WANDB_RUN", "NPROC_PER_NODE")}
    env.update(NANOCHAT_BASE_DIR=str(base_dir), **extra)
    return env


def dry_run(script, base_dir, **extra):
    """The commands a runbook would run (comment lines and the optional Rust install dropped)."""
    result = subprocess.run(["bash", script], cwd=REPO, env=clean_env(base_dir, NANOCHAT_DRY_RUN="1", **extra),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines()
            if line and not line.startswith("#") and "sh.rustup.rs" not in line]


@pytest.mark.parametrize("script", RUNBOOKS)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", RUNBOOKS)
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", "-x", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_speedrun_dry_run_prints_the_reference_stages(tmp_path):
    base = tmp_path / "base"
    assert dry_run("speedrun.sh", base) == [
        "source dev/setup_env.sh gpu",
        "python -c 'from nanochat.common import require_cuda; require_cuda()'",
        "python -m nanochat.report reset",
        "python -m nanochat.dataset -n 8",
        "python -m nanochat.dataset -n 240 &",
        "python -m scripts.tok_train --max_chars=2000000000",
        "python -m scripts.tok_eval",
        "wait",
        f"{TORCHRUN} -m scripts.base_train -- --depth=20 --run=dummy",
        f"{TORCHRUN} -m scripts.base_loss",
        f"{TORCHRUN} -m scripts.base_eval",
        f"curl -L --fail -o {base}/identity_conversations.jsonl {IDENTITY_URL}",
        f"{TORCHRUN} -m scripts.mid_train -- --run=dummy",
        f"{TORCHRUN} -m scripts.chat_eval -- -i mid",
        f"{TORCHRUN} -m scripts.chat_sft -- --run=dummy",
        f"{TORCHRUN} -m scripts.chat_eval -- -i sft",
        "python -m nanochat.report generate",
    ]
    assert not base.exists()  # a dry run creates nothing


def test_run1000_dry_run_waits_for_the_download_before_pretraining(tmp_path):
    commands = dry_run("run1000.sh", tmp_path, WANDB_RUN="d32")
    assert commands.index("python -m nanochat.dataset -n 800 &") < commands.index("wait") \
        < commands.index(f"{TORCHRUN} -m scripts.base_train -- --depth=32 --device_batch_size=8 --run=d32")
    assert f"{TORCHRUN} -m scripts.mid_train -- --device_batch_size=8 --run=d32" in commands
    assert commands[1].startswith("python -c")  # the CUDA check comes before any stage
    assert commands[3].startswith("curl -L --fail -o ")  # identity conversations right after report reset
    assert commands[-2:] == ["python -m nanochat.report generate", "python -m scripts.chat_web"]
    assert "python -m scripts.tok_train --max_chars=4000000000" in commands


def test_runcpu_dry_run_covers_the_whole_pipeline(tmp_path):
    commands = dry_run("dev/runcpu.sh", tmp_path, NANOCHAT_DATA_PACK=str(tmp_path))
    modules = [c.split()[2] for c in commands if c.startswith("python -m ")]
    assert modules == ["nanochat.report", "nanochat.dataset", "scripts.tok_train", "scripts.tok_eval",
                       "scripts.base_train", "scripts.base_loss", "scripts.base_eval", "dev.gen_synthetic_data",
                       "scripts.mid_train", "scripts.chat_eval", "scripts.chat_sft", "scripts.chat_eval",
                       "scripts.chat_rl", "scripts.chat_eval", "nanochat.report"]
    assert "python -m scripts.chat_eval -i rl -a GSM8K --max-new-tokens=128 --max-problems=20" in commands
    without_rl = dry_run("dev/runcpu.sh", tmp_path, NANOCHAT_RUNCPU_RL="0")
    assert not any("chat_rl" in c or "-i rl" in c for c in without_rl)
    assert commands[0] == "source dev/setup_env.sh cpu"
    assert "python -m scripts.base_eval --max-per-task=16" in commands
    assert "python -m dev.gen_synthetic_data --offline" in commands
    assert not any("torchrun" in c or "curl" in c for c in commands)


def test_existing_tokenizer_is_kept_unless_forced(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.pkl").write_bytes(b"x")
    assert not any("scripts.tok_train" in c for c in dry_run("speedrun.sh", tmp_path))
    assert any("scripts.tok_train" in c for c in dry_run("speedrun.sh", tmp_path, FORCE="1"))


def test_skip_list_leaves_out_stages(tmp_path):
    commands = dry_run("speedrun.sh", tmp_path, NANOCHAT_SKIP="report_reset,base_train dataset")
    assert "python -m nanochat.report reset" not in commands
    assert not any("base_train" in c or c == "wait" or "-n 240" in c for c in commands)
    assert f"{TORCHRUN} -m scripts.base_loss" in commands


def run_lib(tmp_path, body, **extra):
    """Run a bash snippet that sources runbook_lib.sh the way the runbooks do."""
    script = f'set -euo pipefail\nsource dev/runbook_lib.sh\nnc_init\n{body}\n'
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=clean_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=60)


def test_failing_stage_stops_the_runbook_with_its_name_and_log(tmp_path):
    result = run_lib(tmp_path, "\n".join([
        "run_stage first echo hello",
        "run_stage broken bash -c 'echo about to fail; exit 3'",
        "run_stage never echo should-not-run",
    ]))
    log = tmp_path / "logs" / "broken.log"
    assert result.returncode == 3
    assert "stage 'broken' failed with exit code 3" in result.stderr
    assert f"log: {log}" in result.stderr
    assert log.read_text() == "about to fail\n"
    assert (tmp_path / "logs" / "first.log").read_text() == "hello\n"
    assert "should-not-run" not in result.stdout and not (tmp_path / "logs" / "never.log").exists()


def test_failing_background_stage_stops_at_the_wait(tmp_path):
    result = run_lib(tmp_path, "\n".join([
        "start_background download bash -c 'echo fetching; exit 4'",
        "run_stage meanwhile echo working",
        "wait_background download",
        "echo after-wait",
    ]))
    assert result.returncode == 4
    assert "stage 'download' failed with exit code 4" in result.stderr
    assert (tmp_path / "logs" / "download.log").read_text() == "fetching\n"
    assert "working" in result.stdout and "after-wait" not in result.stdout


def test_optional_stage_failure_only_warns(tmp_path):
    result = run_lib(tmp_path, "run_optional_stage extra bash -c 'exit 2' || true\necho carried-on")
    assert result.returncode == 0
    assert "optional stage 'extra' failed with exit code 2" in result.stderr
    assert "carried-on" in result.stdout


def test_offline_identity_failure_is_a_warning(tmp_path):
    # no dev/gen_synthetic_data module to run here: the runbook must warn and go on
    fake_python = tmp_path / "bin"
    fake_python.mkdir()
    (fake_python / "python").write_text("#!/bin/sh\necho 'No module named dev.gen_synthetic_data' >&2\nexit 1\n")
    (fake_python / "python").chmod(0o755)
    result = run_lib(tmp_path, "nc_identity_conversations\necho carried-on",
                     NANOCHAT_DATA_PACK=str(tmp_path), PATH=f"{fake_python}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert "continuing without identity conversations" in result.stderr
    assert "carried-on" in result.stdout


def test_runcpu_smoke_run(tmp_path, data_pack):
    """The whole CPU pipeline at smoke size, offline from the data pack (a few minutes)."""
    env = clean_env(tmp_path / "base", NANOCHAT_DATA_PACK=data_pack, NANOCHAT_SMOKE="1", NANOCHAT_SKIP_SETUP="1",
                    PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    copied_report = os.path.join(REPO, "report.md")  # `report generate` also copies it into the repo root
    had_report = os.path.exists(copied_report)
    try:
        result = subprocess.run(["bash", "dev/runcpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=1800)
    finally:
        if not had_report and os.path.exists(copied_report):
            os.remove(copied_report)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "base" / "report" / "report.md").read_text()
    for section in ("## Base model training", "## Midtraining", "## Chat SFT", "## Summary"):
        assert section in report
    assert "| Metric          | BASE     | MID      | SFT      | RL       |" in report
    base = tmp_path / "base"
    artifacts = ["base_data/shard_00000.parquet", "tokenizer/tokenizer.pkl", "tokenizer/token_bytes.pt",
                 "identity_conversations.jsonl"]
    for path in artifacts:
        assert (base / path).exists(), f"stage artifact missing: {path}"
    for stage in ("base_checkpoints", "mid_checkpoints", "chatsft_checkpoints"):
        assert list((base / stage).glob("*/model_*.pt")), f"no checkpoint written under {stage}"
    assert list((base / "base_eval").glob("*.csv")), "base_eval wrote no CSV"


@pytest.mark.parametrize("script", ["speedrun.sh", "run1000.sh"])
def test_gpu_runbooks_stop_before_any_stage_without_cuda(tmp_path, script):
    import sys

    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    env = clean_env(tmp_path / "base", NANOCHAT_SKIP_SETUP="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # the python with torch
    result = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr and "--device_type=cpu" in result.stderr
    assert not (tmp_path / "base" / "report").exists()  # stopped before the first stage
