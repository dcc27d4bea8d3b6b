"""
The evaluations that run inside training at their intervals (every other test turns them off):
CORE and sampling in base_train, MMLU / ARC-Easy accuracy in chat_sft. Run once each, small.
"""

import json
import os
import re

from stage_setup import read_checkpoint, save_model_checkpoint, write_identity
from test_base_train import TINY, train_env  # noqa: F401 - the fixture is used by name


def metrics_of(base_dir, stage_slug):
    with open(os.path.join(base_dir, "report", "metrics", f"{stage_slug}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_base_train_runs_core_and_sampling_at_their_interval(data_pack, train_env, capsys):  # noqa: F811
    from scripts.base_train import main
    main([a for a in TINY if not a.startswith(("--core_metric_every", "--sample_every"))]
         + ["--num_iterations=2", "--eval_every=-1", "--core_metric_every=2", "--core_metric_max_per_task=2",
            "--sample_every=2"])
    log = capsys.readouterr().out
    assert len(re.findall(r"^Evaluating: \w+", log, re.M)) == 21  # every task of the pack's bundle (coqa is absent)
    core = float(re.search(r"Step 00002 \| CORE metric: (-?[0-9.]+)", log).group(1))
    assert -1.0 <= core <= 1.0
    recorded = [m for m in metrics_of(train_env, "base-model-training") if "core_metric" in m]
    assert [m["step"] for m in recorded] == [2] and abs(recorded[0]["core_metric"] - core) < 1e-4
    for prompt in ("The capital of France is", "The opposite of hot is"):
        sample = next(line for line in log.splitlines() if prompt in line)
        assert len(sample.split(prompt, 1)[1]) > 0  # something was generated after the prompt


def test_chat_sft_reports_mmlu_and_arc_at_its_interval(data_pack, base_dir, byte_tokenizer, capsys):
    from scripts.chat_sft import main
    save_model_checkpoint(base_dir, "mid_checkpoints", byte_tokenizer, seq_len=128)
    write_identity(base_dir)
    main(["--device_type=cpu", "--max_seq_len=256", "--device_batch_size=2", "--target_examples_per_step=2",
          "--num_iterations=1", "--eval_every=-1", "--eval_metrics_every=1", "--eval_metrics_max_problems=4"])
    log = capsys.readouterr().out
    found = re.search(r"Step 00001 \| MMLU acc: ([0-9.]+) \| ARC-Easy acc: ([0-9.]+)", log)
    assert found, log[-2000:]
    _, meta = read_checkpoint(base_dir, "chatsft_checkpoints", "d1", 1)
    for key, logged in zip(("mmlu_acc", "arc_easy_acc"), found.groups()):
        assert meta[key] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 problems each
        assert abs(meta[key] - float(logged)) < 1e-4
