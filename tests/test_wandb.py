"""wandb: installed by the documented set-up like in the original, used only when --run names a run."""

import glob
import os
import subprocess
import sys
import tomllib

from test_base_train import TINY, train_env  # noqa: F401  (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_base_train(args, base_dir, tmp_path, code_after=""):
    code = ("import sys\nfrom scripts.base_train import main\n"
            f"main({TINY + ['--num_iterations=2', '--eval_every=-1'] + args!r})\n" + code_after)
    env = dict(os.environ, NANOCHAT_BASE_DIR=base_dir, WANDB_MODE="offline", WANDB_DIR=str(tmp_path),
               WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_wandb_is_installed_by_the_setup():
    """`uv sync` (dev/setup_env.sh, every runbook) installs [project] dependencies: wandb must be one, pinned."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    pins = [d for d in dependencies if d.split("==")[0] == "wandb"]
    assert len(pins) == 1 and "==" in pins[0], dependencies
    import wandb  # the environment the set-up made has it
    assert wandb.__version__ == pins[0].split("==")[1]


def test_named_run_writes_a_local_offline_wandb_run(train_env, tmp_path):  # noqa: F811
    run_base_train(["--run=x"], train_env, tmp_path)
    runs = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*"))
    assert len(runs) == 1, os.listdir(tmp_path)
    assert glob.glob(os.path.join(runs[0], "run-*.wandb"))


def test_dummy_run_imports_no_wandb(train_env, tmp_path):  # noqa: F811
    run_base_train(["--run=dummy"], train_env, tmp_path, "assert 'wandb' not in sys.modules, 'wandb imported'\n")
    assert not os.path.exists(os.path.join(tmp_path, "wandb"))
