"""Report card: environment header, section files, the summary table and the training-curve plots."""

import datetime
import functools
import json
import os
import re
import subprocess
import sys

import pytest

from nanochat import report as report_mod
from nanochat.report import (DummyReport, Report, extract, extract_timestamp, format_value, get_report,
                             slugify)
from nanochat.report_plots import read_metrics

SYSTEM = {"hostname": "box", "platform": "Linux", "python_version": "3.11.7", "torch_version": "2.9.0",
          "cpu_count": 8, "cpu_count_logical": 16, "memory_gb": 62.75, "user": "me",
          "nanochat_base_dir": "out", "working_dir": "/repo"}
GIT = {"commit": "abc1234", "branch": "main", "dirty": True, "message": "Add the report card"}
BLOAT = {"chars": 123456, "lines": 3456, "files": 42, "tokens": 30864, "dependencies": 2004}
H100S = {"available": True, "count": 8, "names": ["NVIDIA H100 80GB HBM3"] * 8, "memory_gb": [79.1] * 8,
         "cuda_version": "12.8"}


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(report_mod, "get_git_info", lambda: dict(GIT))
    monkeypatch.setattr(report_mod, "get_system_info", lambda: dict(SYSTEM))
    monkeypatch.setattr(report_mod, "get_bloat_info", lambda: dict(BLOAT))
    monkeypatch.setattr(report_mod, "get_gpu_info", lambda: {"available": False})
    monkeypatch.setattr(report_mod, "now", lambda: "2025-10-13 09:00:00")


def header_lines(gpu_lines):
    return [
        "# nanochat training report", "",
        "Generated: 2025-10-13 09:00:00", "",
        "## Environment", "",
        "### Git Information",
        "- Branch: main",
        "- Commit: abc1234 (dirty)",
        "- Message: Add the report card", "",
        "### Hardware",
        "- Platform: Linux",
        "- CPUs: 8 cores (16 logical)",
        "- Memory: 62.8 GB",
        *gpu_lines, "",
        "### Software",
        "- Python: 3.11.7",
        "- PyTorch: 2.9.0", "", "",
        "### Bloat",
        "- Characters: 123,456",
        "- Lines: 3,456",
        "- Files: 42",
        "- Tokens (approx): 30,864",
        "- Dependencies (uv.lock lines): 2,004", "", "",
    ]


def test_header_layout_without_gpu(fake_env):
    assert report_mod.generate_header().split("\n") == header_lines(["- GPUs: None available"])


def test_header_layout_with_gpus(fake_env, monkeypatch):
    monkeypatch.setattr(report_mod, "get_gpu_info", lambda: dict(H100S))
    expected = header_lines(["- GPUs: 8x NVIDIA H100 80GB HBM3", "- GPU Memory: 632.8 GB total",
                             "- CUDA Version: 12.8", "- Hourly Rate: $24.00/hour"])
    assert report_mod.generate_header().split("\n") == expected


def test_header_bloat_block_is_extractable(fake_env):
    match = re.search(r"### Bloat\n(.*?)\n\n", report_mod.generate_header(), re.DOTALL)
    assert match.group(1).split("\n")[0] == "- Characters: 123,456"
    assert match.group(1).split("\n")[-1] == "- Dependencies (uv.lock lines): 2,004"


def test_real_header_has_the_fixed_sections():
    header = report_mod.generate_header()
    titles = [line for line in header.split("\n") if line.startswith("#")]
    assert titles == ["# nanochat training report", "## Environment", "### Git Information", "### Hardware",
                      "### Software", "### Bloat"]
    assert header.endswith("\n\n")


def test_estimate_cost():
    assert report_mod.estimate_cost({"available": False}) is None
    cost = report_mod.estimate_cost(H100S, runtime_hours=4)
    assert cost == {"hourly_rate": 24.0, "gpu_type": "NVIDIA H100 80GB HBM3", "estimated_total": 96.0}
    a100 = report_mod.estimate_cost({"available": True, "count": 2, "names": ["A100-SXM4-40GB"] * 2})
    assert a100["hourly_rate"] == pytest.approx(3.58) and a100["estimated_total"] is None
    other = report_mod.estimate_cost({"available": True, "count": 1, "names": ["RTX 4090"]})
    assert other["hourly_rate"] == 2.0


def test_git_info_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert report_mod.get_git_info(cwd=str(tmp_path)) == {"commit": "unknown", "branch": "unknown",
                                                           "dirty": False, "message": ""}


def test_git_info_without_git_installed(monkeypatch):
    monkeypatch.setattr(report_mod, "run_command", lambda cmd, cwd=None: None)
    assert report_mod.get_git_info() == {"commit": "unknown", "branch": "unknown", "dirty": False, "message": ""}


def test_run_command():
    assert report_mod.run_command("echo '  hi  '") == "hi"
    assert report_mod.run_command("exit 3") is None
    assert report_mod.run_command("a-command-that-does-not-exist-anywhere") is None


def make_source_tree(root):
    files = {"a.py": "print('a')\n", "docs/b.md": "# B\n\ntext\n", "notes.txt": "not counted\n",
             "rustbpe/target/gen.rs": "skipped build output\n", ".hidden/c.py": "hidden\n"}
    for path, content in files.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content)
    (root / "uv.lock").write_text("one\ntwo\nthree\n")


def test_bloat_counts_what_files_to_prompt_packs(tmp_path, monkeypatch):
    make_source_tree(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")  # the pinned package is run by this interpreter, not found on PATH
    info = report_mod.get_bloat_info(str(tmp_path))
    expected = "\n".join([
        "<documents>",
        '<document index="1">', "<source>./a.py</source>", "<document_content>", "print('a')\n",
        "</document_content>", "</document>",
        '<document index="2">', "<source>./docs/b.md</source>", "<document_content>", "# B\n\ntext\n",
        "</document_content>", "</document>",
        "</documents>"])
    assert info == {"chars": len(expected), "lines": expected.count("\n") + 1, "files": 2,
                    "tokens": len(expected) // 4, "dependencies": 3}


def test_format_value():
    assert format_value(0.123456) == "0.1235"
    assert format_value(12345678) == "12,345,678"
    assert format_value(9999) == "9999"
    assert format_value(True) == "True"
    assert format_value("2.5e+18") == "2.5e+18"


def test_log_writes_the_section(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "now", lambda: "2025-10-13 10:11:12")
    path = Report(str(tmp_path)).log("Base model training", [
        {"depth": 20, "Number of parameters": 560988160, "Minimum validation bpb": 0.81234},
        None, {}, "some *markdown*\n",
        {"MFU %": "48.12%", "enabled": False},
    ])
    assert os.path.basename(path) == "base-model-training.md"
    assert open(path).read() == (
        "## Base model training\ntimestamp: 2025-10-13 10:11:12\n\n"
        "- depth: 20\n- Number of parameters: 560,988,160\n- Minimum validation bpb: 0.8123\n"
        "some *markdown*\n- MFU %: 48.12%\n- enabled: False\n\n")


def test_slugify():
    assert slugify("Chat evaluation sft") == "chat-evaluation-sft"
    assert [slugify(s) + ".md" for s in ["Tokenizer training", "Midtraining", "Chat RL"]] == \
        ["tokenizer-training.md", "midtraining.md", "chat-rl.md"]


def test_extract():
    section = "## Chat evaluation sft\n- task_name: None\n- ARC-Easy: 0.3876\n- MMLU: 0.3111\n" \
              "- ChatCORE metric: 0.0730\n- ARC-Easy: 0.4000\n"
    assert extract(section, ["ARC-Easy", "MMLU", "ChatCORE", "GSM8K"]) == \
        {"ARC-Easy": "0.4000", "MMLU": "0.3111", "ChatCORE": "0.0730"}
    assert extract("- CORE metric: 0.2219\n- hellaswag: 0.25\n", "CORE") == {"CORE": "0.2219"}
    assert extract("- mmlu: 0.1\n", "MMLU") == {}


def test_extract_timestamp():
    content = "## X\ntimestamp: 2025-10-13 10:11:12\ntimestamp: 2030-01-01 00:00:00\n"
    assert extract_timestamp(content, "timestamp:") == datetime.datetime(2025, 10, 13, 10, 11, 12)
    assert extract_timestamp("Run started: not a time\n", "Run started:") is None
    assert extract_timestamp("nothing here\n", "timestamp:") is None


def write_section(report, monkeypatch, title, timestamp, metrics):
    """A stage's section, logged the way the stages log theirs, at a given time."""
    monkeypatch.setattr(report_mod, "now", lambda: timestamp)
    report.log(title, [metrics])


@pytest.fixture
def finished_run(tmp_path, fake_env, monkeypatch):
    """A report dir holding a header and the sections of a whole run (RL included)."""
    report_dir = tmp_path / "report"
    report = Report(str(report_dir))
    monkeypatch.setattr(report_mod, "now", lambda: "2025-10-13 09:00:00")
    report.reset()
    log = functools.partial(write_section, report, monkeypatch)
    log("Tokenizer training", "2025-10-13 09:10:00", {"vocab_size": 65536})
    log("Base model training", "2025-10-13 12:00:00", {"depth": 20})
    log("Base model evaluation", "2025-10-13 12:10:00",
        {"Model": "base_model (step 21400)", "CORE metric": 0.2219, "hellaswag": 0.2570})
    chat = {"ARC-Challenge": 0.2807, "MMLU": 0.3111, "GSM8K": 0.0250, "HumanEval": 0.0671,
            "SpellingBee": 0.9844, "ChatCORE metric": 0.0730}
    log("Chat evaluation mid", "2025-10-13 12:40:00", {"source": "mid", "ARC-Easy": 0.3561, **chat})
    log("Chat evaluation sft", "2025-10-13 12:25:00", {"source": "sft", "ARC-Easy": 0.3876, **chat})
    log("Chat evaluation rl", "2025-10-13 15:00:00", {"task_name": "GSM8K", "GSM8K": 0.0758})
    monkeypatch.setattr(report_mod, "now", lambda: "2025-10-13 09:00:00")
    monkeypatch.chdir(tmp_path)
    return report


def test_generate_summary_table(finished_run, tmp_path):
    path = finished_run.generate()
    content = open(path).read()
    summary = content[content.index("## Summary"):]
    assert summary.split("\n") == [
        "## Summary", "",
        "- Characters: 123,456",
        "- Lines: 3,456",
        "- Files: 42",
        "- Tokens (approx): 30,864",
        "- Dependencies (uv.lock lines): 2,004", "",
        "| Metric          | BASE     | MID      | SFT      | RL       |",
        "|-----------------|----------|----------|----------|----------|",
        "| CORE            | 0.2219   | -        | -        | -        |",
        "| ARC-Challenge   | -        | 0.2807   | 0.2807   | -        |",
        "| ARC-Easy        | -        | 0.3561   | 0.3876   | -        |",
        "| GSM8K           | -        | 0.0250   | 0.0250   | 0.0758   |",
        "| HumanEval       | -        | 0.0671   | 0.0671   | -        |",
        "| MMLU            | -        | 0.3111   | 0.3111   | -        |",
        "| ChatCORE        | -        | 0.0730   | 0.0730   | -        |", "",
        # the clock stops at the last non-RL section in pipeline order (sft, 12:25), not at RL
        "Total wall clock time: 3h25m", "",
    ]
    # sections appear in pipeline order after the header; the copy lands in the working directory
    order = [content.index(f"## {t}\n") for t in ("Environment", "Tokenizer training", "Base model training",
                                                   "Base model evaluation", "Chat evaluation mid",
                                                   "Chat evaluation sft", "Chat evaluation rl", "Summary")]
    assert order == sorted(order)
    assert open(tmp_path / "report.md").read() == content


def test_generate_without_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = Report(str(tmp_path / "report"))
    content = open(report.generate()).read()
    assert content.startswith("## Summary\n\n[bloat data missing]\n\n| Metric ")
    assert content.endswith("Total wall clock time: unknown\n")


def test_reset_removes_sections_metrics_and_plots(finished_run, tmp_path):
    finished_run.log_metrics("Base model training", 0, train_loss=10.0)
    finished_run.generate()
    report_dir = tmp_path / "report"
    assert (report_dir / "plots" / "base-model-training.png").exists()
    finished_run.reset()
    assert sorted(os.listdir(report_dir)) == ["header.md"]
    assert open(report_dir / "header.md").read().endswith("Run started: 2025-10-13 09:00:00\n\n---\n\n")


def test_log_metrics_appends_json_lines(tmp_path):
    report = Report(str(tmp_path))
    report.log_metrics("Base model training", 0, train_loss=10.5, lrm=1.0)
    report.log_metrics("base-model-training", 250, val_bpb=1.25)
    assert report.log_metrics("Base model training", 260) is None  # nothing to record
    lines = open(tmp_path / "metrics" / "base-model-training.jsonl").read().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 0, "train_loss": 10.5, "lrm": 1.0},
                                                    {"step": 250, "val_bpb": 1.25}]
    with pytest.raises(TypeError, match="needs a number"):
        report.log_metrics("Base model training", 1, train_loss="low")


def test_log_metrics_accepts_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    Report(str(tmp_path)).log_metrics("Chat SFT", torch.tensor(3), val_loss=torch.tensor(1.5))
    assert json.loads(open(tmp_path / "metrics" / "chat-sft.jsonl").read()) == {"step": 3, "val_loss": 1.5}


def test_read_metrics_keeps_the_last_point_of_a_repeated_step(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0, "train_loss": 9.0}\n{"step": 1, "train_loss": 8.0}\nnot json\n'
                    '{"step": 1, "train_loss": 7.5, "val_bpb": 1.1}\n{"step": 2, "train_loss": NaN}\n')
    assert read_metrics(str(path)) == {"train_loss": ([0, 1], [9.0, 7.5]), "val_bpb": ([1], [1.1])}


def test_generate_draws_and_links_plots(finished_run, tmp_path):
    for step in range(0, 101, 10):
        finished_run.log_metrics("Base model training", step, train_loss=10.0 - step / 20)
        if step % 50 == 0:
            finished_run.log_metrics("Base model training", step, val_bpb=2.0 - step / 100)
    finished_run.log_metrics("Base model training", 100, core_metric=0.12)
    finished_run.log_metrics("Chat SFT", 5, val_loss=1.3)  # no "Chat SFT" section was written
    content = open(finished_run.generate()).read()

    plot = tmp_path / "report" / "plots" / "base-model-training.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    width, height = Image.open(plot).size
    assert width > 2 * height  # three panels side by side: loss, bpb, CORE

    link = "![base-model-training curves](plots/base-model-training.png)"
    base_section = content[content.index("## Base model training"):content.index("## Base model evaluation")]
    assert link in base_section
    orphan = content[content.index("## Training curves"):content.index("## Summary")]
    assert "![chat-sft curves](plots/chat-sft.png)" in orphan
    # the copy in the working directory points at the plots with absolute paths
    copied = open(tmp_path / "report.md").read()
    assert f"]({tmp_path / 'report' / 'plots' / 'base-model-training.png'})" in copied


def test_get_report_by_rank(base_dir, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    report = get_report()
    assert isinstance(report, Report) and report.report_dir == os.path.join(base_dir, "report")
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    dummy = get_report()
    assert isinstance(dummy, DummyReport)
    dummy.log("Base model training", [{"a": 1}])
    dummy.log_metrics("Base model training", 0, train_loss=1.0)
    dummy.reset()
    assert not os.path.exists(os.path.join(base_dir, "report", "metrics"))


def test_cli_reset_and_generate(base_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.chdir(tmp_path)
    report_mod.main(["reset"])
    report_mod.main([])  # generate is the default
    content = open(os.path.join(base_dir, "report", "report.md")).read()
    assert content.startswith("# nanochat training report\n")
    assert "Run started: " in content and "| Metric          |" in content
    assert (tmp_path / "report.md").exists()


def test_cli_rejects_unknown_commands(tmp_path):
    env = dict(os.environ, PYTHONPATH=report_mod.REPO_ROOT)
    bad = subprocess.run([sys.executable, "-m", "nanochat.report", "publish"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_summary_marks_a_partial_core(tmp_path, monkeypatch):
    from nanochat.report import Report
    monkeypatch.chdir(tmp_path)  # generate() also copies report.md into the working directory
    report = Report(str(tmp_path / "report"))
    report.reset()
    report.log("Base model evaluation", [{"Model": "base_model (step 10)",
                                          "CORE over 21 of 22 tasks (coqa skipped, not the full CORE) metric": 0.0414}])
    text = open(report.generate()).read()
    assert "| CORE (21/22)    | 0.0414   | -        | -        | -        |" in text
