"""
The run report card.

Every stage of a run writes one markdown section into `<base>/report/`; `reset` starts a run
(it writes `header.md` with the environment and the code size) and `generate` stitches
`report.md` from the header, the sections in pipeline order, a summary table of the headline
metrics, and PNG plots of the training curves. From a stage script:

    from nanochat.report import get_report
    report = get_report()                       # a real Report on rank 0, a no-op on other ranks
    report.log(section="Base model training", data=[user_config, {"Minimum validation bpb": 0.81}])
    report.log_metrics("Base model training", step, train_loss=2.91)   # any numeric keywords,
    report.log_metrics("Base model training", step, val_bpb=0.95)      # sparse keys are fine

`log` also stores the section's dict items, unformatted, in `<slug>.json` beside `<slug>.md`; the
summary table is built from those, not parsed back out of the markdown.
Each `log_metrics` call appends one JSON line `{"step": step, ...}` to
`<base>/report/metrics/<slug>.jsonl` (the slug of the section name, e.g. `base-model-training`).
Conventional keys are `train_loss`, `val_bpb`, `core_metric`, `val_loss`, `lrm`, `reward`; any
other numeric key gets its own panel. A resumed run may log a step twice: the later point wins.

CLI: `python -m nanochat.report [generate|reset]`.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# -----------------------------------------------------------------------------
# Environment probes


def run_command(cmd, cwd=None):
    """Run a shell command (5 s limit); its stripped stdout when it exits 0, else None."""
    try:
        result = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=5, cwd=cwd)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def get_git_info(cwd=REPO_ROOT):
    """Commit, branch, dirty flag and the first line of the last commit message of the repo."""
    commit = run_command("git rev-parse --short HEAD", cwd=cwd) or "unknown"
    branch = run_command("git rev-parse --abbrev-ref HEAD", cwd=cwd) or "unknown"
    status = run_command("git status --porcelain", cwd=cwd)
    message = run_command("git log -1 --pretty=%B", cwd=cwd)
    message = message.split("\n")[0][:80] if message else ""
    return {"commit": commit, "branch": branch, "dirty": bool(status), "message": message}


def get_gpu_info():
    """CUDA devices with their names and memory in GiB, or {"available": False}."""
    import torch
    if not torch.cuda.is_available():
        return {"available": False}
    devices = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {"available": True, "count": len(devices), "names": [props.name for props in devices],
            "memory_gb": [props.total_memory / 1024**3 for props in devices],
            "cuda_version": torch.version.cuda or "unknown"}


def get_system_info():
    import psutil
    import torch
    return {
        "hostname": socket.gethostname(),
        "platform": platform.system(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        # psutil answers None for physical cores on some virtual machines
        "cpu_count": psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "memory_gb": psutil.virtual_memory().total / 1024**3,
        "user": os.environ.get("USER", "unknown"),
        "nanochat_base_dir": os.environ.get("NANOCHAT_BASE_DIR", "out"),
        "working_dir": os.getcwd(),
    }


GPU_HOURLY_RATES = [("H100", 3.00), ("A100", 1.79), ("V100", 0.55)]
DEFAULT_GPU_HOURLY_RATE = 2.00


def estimate_cost(gpu_info, runtime_hours=None):
    """Rough on-demand cloud price of the GPUs: None without GPUs."""
    if not gpu_info.get("available"):
        return None
    gpu_type = gpu_info["names"][0] if gpu_info.get("names") else "unknown"
    rate = next((r for key, r in GPU_HOURLY_RATES if key in gpu_type), DEFAULT_GPU_HOURLY_RATE)
    hourly_rate = rate * gpu_info.get("count", 1)
    return {"hourly_rate": hourly_rate, "gpu_type": gpu_type,
            "estimated_total": hourly_rate * runtime_hours if runtime_hours is not None else None}


# -----------------------------------------------------------------------------
# Code size ("bloat")

# the reference's command line: files-to-prompt . -e py -e md -e rs -e html -e toml -e sh --ignore "*target*" --cxml
FILES_TO_PROMPT_ARGS = ". -e py -e md -e rs -e html -e toml -e sh --ignore *target* --cxml".split()


def get_bloat_info(root=REPO_ROOT):
    """Characters, lines, files and approximate tokens of the source as files-to-prompt packs it, plus uv.lock lines."""
    # the pinned package run by this interpreter, so it is found without the venv's bin/ on PATH;
    # stdin closed because files-to-prompt reads extra paths from a non-terminal stdin
    result = subprocess.run([sys.executable, "-m", "files_to_prompt", *FILES_TO_PROMPT_ARGS], cwd=root, check=True,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    packed = result.stdout.strip()
    lines = packed.split("\n")
    uv_lock = Path(root, "uv.lock")
    dependencies = len(uv_lock.read_text(encoding="utf-8").splitlines()) if uv_lock.exists() else 0
    return {"chars": len(packed), "lines": len(lines),
            "files": sum(1 for line in lines if line.startswith("<source>")),
            "tokens": len(packed) // 4, "dependencies": dependencies}


# -----------------------------------------------------------------------------
# Header


def now():
    return datetime.datetime.now().strftime(TIME_FORMAT)


def generate_header():
    """The markdown environment header that `reset` writes to header.md (layout is fixed)."""
    git = get_git_info()
    gpu = get_gpu_info()
    system = get_system_info()
    cost = estimate_cost(gpu)
    bloat = get_bloat_info()

    out = [
        "# nanochat training report", "",
        f"Generated: {now()}", "",
        "## Environment", "",
        "### Git Information",
        f"- Branch: {git['branch']}",
        f"- Commit: {git['commit']} {'(dirty)' if git['dirty'] else '(clean)'}",
        f"- Message: {git['message']}", "",
        "### Hardware",
        f"- Platform: {system['platform']}",
        f"- CPUs: {system['cpu_count']} cores ({system['cpu_count_logical']} logical)",
        f"- Memory: {system['memory_gb']:.1f} GB",
    ]
    if gpu.get("available"):
        names = ", ".join(dict.fromkeys(gpu["names"]))  # distinct names, first-seen order
        out += [f"- GPUs: {gpu['count']}x {names}",
                f"- GPU Memory: {sum(gpu['memory_gb']):.1f} GB total",
                f"- CUDA Version: {gpu['cuda_version']}"]
    else:
        out.append("- GPUs: None available")
    if cost and cost["hourly_rate"] > 0:
        out.append(f"- Hourly Rate: ${cost['hourly_rate']:.2f}/hour")
    out += [
        "",
        "### Software",
        f"- Python: {system['python_version']}",
        f"- PyTorch: {system['torch_version']}",
        "", "",
        "### Bloat",
        f"- Characters: {bloat['chars']:,}",
        f"- Lines: {bloat['lines']:,}",
        f"- Files: {bloat['files']:,}",
        f"- Tokens (approx): {bloat['tokens']:,}",
        f"- Dependencies (uv.lock lines): {bloat['dependencies']:,}",
        "", "",
    ]
    return "\n".join(out)


# -----------------------------------------------------------------------------
# Sections and the summary


def slugify(text):
    return text.lower().replace(" ", "-")


EXPECTED_FILES = [  # pipeline order, one stage per line
    "tokenizer-training.md", "tokenizer-evaluation.md",
    "base-model-training.md", "base-model-loss.md", "base-model-evaluation.md",
    "midtraining.md", "chat-evaluation-mid.md",
    "chat-sft.md", "chat-evaluation-sft.md",
    "chat-rl.md", "chat-evaluation-rl.md",
]

chat_metrics = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE"]

SUMMARY_STAGES = ["base", "mid", "sft", "rl"]
# section file -> (summary column, the metrics it contributes)
SUMMARY_SOURCES = {
    "base-model-evaluation.md": ("base", ["CORE"]),
    "chat-evaluation-mid.md": ("mid", chat_metrics),
    "chat-evaluation-sft.md": ("sft", chat_metrics),
    "chat-evaluation-rl.md": ("rl", ["GSM8K"]),
}


def headline_metrics(logged, names):
    """{name: formatted value} of the summary metrics among a section's logged {key: value}: a metric is
    logged under its own name or as "<name> metric"; a CORE over only some tasks is labelled as such."""
    found = {}
    for key, value in logged.items():
        name = key.removesuffix(" metric")
        partial = re.fullmatch(r"CORE over (\d+) of (\d+) tasks.*", name)
        if partial and "CORE" in names:  # some task files were missing: never pass it off as CORE
            found[f"CORE ({partial.group(1)}/{partial.group(2)})"] = format_value(value)
        elif name in names:
            found[name] = format_value(value)
    return found


def extract(section, keys):
    """{key: value} from the `- key...: value` lines of a section; later lines win."""
    keys = [keys] if isinstance(keys, str) else keys
    return {key: line.split(":", 1)[1].strip()
            for line in section.split("\n") for key in keys if key in line and ":" in line}


def extract_timestamp(content, prefix):
    """The time on the first line starting with `prefix`, or None."""
    for line in content.split("\n"):
        if line.startswith(prefix):
            try:
                return datetime.datetime.strptime(line.split(":", 1)[1].strip(), TIME_FORMAT)
            except (ValueError, IndexError):
                return None
    return None


def format_value(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
        return f"{value:,}"
    return str(value)


def summary_table(final_metrics):
    """The fixed-width Metric | BASE | MID | SFT | RL table (CORE first, ChatCORE last)."""
    names = sorted(set().union(*final_metrics.values()),
                   key=lambda name: (not name.startswith("CORE"), name == "ChatCORE", name))
    metric_width, value_width = 15, 8

    def row(label, cells):
        return f"| {label.ljust(metric_width)} |" + "".join(f" {str(cell).ljust(value_width)} |" for cell in cells)
    rule = "|" + "-" * (metric_width + 2) + "|" + "".join("-" * (value_width + 2) + "|" for _ in SUMMARY_STAGES)
    rows = [row(name, [final_metrics.get(stage, {}).get(name, "-") for stage in SUMMARY_STAGES]) for name in names]
    return "\n".join([row("Metric", [stage.upper() for stage in SUMMARY_STAGES]), rule, *rows]) + "\n"


def format_duration(start_time, end_time):
    if start_time is None or end_time is None:
        return "unknown"
    minutes_total = int((end_time - start_time).total_seconds() // 60)
    return f"{minutes_total // 60}h{minutes_total % 60}m"


class Report:
    """Markdown sections and metric curves of one run, kept in `report_dir`."""

    def __init__(self, report_dir):
        os.makedirs(report_dir, exist_ok=True)
        self.report_dir = report_dir
        self.metrics_dir = os.path.join(report_dir, "metrics")
        self.plots_dir = os.path.join(report_dir, "plots")

    def log(self, section, data):
        """(Over)write this stage's section; data items are strings (verbatim) or dicts (`- k: v`)."""
        path = os.path.join(self.report_dir, f"{slugify(section)}.md")
        timestamp = now()
        logged = {key: value for item in data if isinstance(item, dict) for key, value in item.items()}
        # the same values, unformatted, for generate's summary (no parsing the markdown back)
        with open(path[:-len(".md")] + ".json", "w", encoding="utf-8") as f:
            json.dump({"timestamp": timestamp, "metrics": logged}, f, indent=2, default=str)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"## {section}\ntimestamp: {timestamp}\n\n")
            for item in data:
                if isinstance(item, str):
                    f.write(item)
                elif item:
                    f.writelines(f"- {key}: {format_value(value)}\n" for key, value in item.items())
            f.write("\n")
        return path

    def log_metrics(self, stage, step, **values):
        """Append one point of the stage's training curves (see the module docstring)."""
        if not values:
            return None
        record = {"step": int(step)}
        for key, value in values.items():
            value = value.item() if hasattr(value, "item") else value
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"log_metrics({key}=...) needs a number, got {type(value).__name__}")
            record[key] = value
        os.makedirs(self.metrics_dir, exist_ok=True)
        path = os.path.join(self.metrics_dir, f"{slugify(stage)}.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return path

    def _make_plots(self):
        """{section slug: plot path relative to the report dir} for every stage with metrics."""
        from nanochat.report_plots import plot_all_stages
        return plot_all_stages(self.metrics_dir, self.plots_dir, relative_to=self.report_dir)

    def generate(self):
        """Write report.md (header, sections, plots, summary) and copy it into the working directory."""
        report_file = os.path.join(self.report_dir, "report.md")
        print(f"Generating report to {report_file}")
        plots = self._make_plots()
        with open(report_file, "w", encoding="utf-8") as out:
            start_time, bloat_data = self._write_header(out)
            final_metrics, end_time = self._write_sections(out, plots)
            if plots:  # curves of stages whose section never got written (e.g. a crashed run)
                out.write("## Training curves\n\n")
                for slug, rel_path in plots.items():
                    out.write(f"![{slug} curves]({rel_path})\n\n")
            out.write(f"## Summary\n\n{bloat_data}\n\n")
            out.write(summary_table(final_metrics) + "\n")
            out.write(f"Total wall clock time: {format_duration(start_time, end_time)}\n")
        print("Copying report.md to the current directory for convenience")
        self._copy_to_cwd(report_file)
        return report_file

    def _write_header(self, out):
        """Copy header.md into the report; returns (run start time, bloat block)."""
        header_file = os.path.join(self.report_dir, "header.md")
        if not os.path.exists(header_file):
            print(f"Warning: {header_file} does not exist; did you run `python -m nanochat.report reset`?")
            return None, "[bloat data missing]"
        header = Path(header_file).read_text(encoding="utf-8")
        out.write(header)
        bloat = re.search(r"### Bloat\n(.*?)\n\n", header, re.DOTALL)
        return extract_timestamp(header, "Run started:"), bloat.group(1) if bloat else ""

    def _write_sections(self, out, plots):
        """Copy the present sections in pipeline order, each followed by its plot (popped from `plots`);
        returns ({stage: headline metrics}, time of the last non-RL section)."""
        final_metrics, end_time = {}, None
        for file_name in EXPECTED_FILES:
            section_file = os.path.join(self.report_dir, file_name)
            if not os.path.exists(section_file):
                print(f"Warning: {section_file} does not exist, skipping")
                continue
            section = Path(section_file).read_text(encoding="utf-8")
            logged = self._logged(file_name)
            if "rl" not in file_name and logged:  # RL is optional and comes last; it does not end the clock
                end_time = datetime.datetime.strptime(logged["timestamp"], TIME_FORMAT)
            if file_name in SUMMARY_SOURCES and logged:
                stage, names = SUMMARY_SOURCES[file_name]
                final_metrics[stage] = headline_metrics(logged["metrics"], names)
            out.write(section)
            slug = file_name.removesuffix(".md")
            if slug in plots:
                out.write(f"![{slug} curves]({plots.pop(slug)})\n\n")
            out.write("\n")
        return final_metrics, end_time

    def _copy_to_cwd(self, report_file):
        """./report.md, with plot links made absolute so they still resolve from there."""
        if os.path.abspath("report.md") == os.path.abspath(report_file):
            return
        content = Path(report_file).read_text(encoding="utf-8")
        plots_prefix = os.path.abspath(self.plots_dir) + os.sep
        Path("report.md").write_text(content.replace("](plots/", "](" + plots_prefix), encoding="utf-8")

    def _logged(self, file_name):
        """{"timestamp", "metrics"} that log() stored beside a section, or None for a hand-written section."""
        path = Path(self.report_dir, file_name.removesuffix(".md") + ".json")
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def reset(self):
        """Start a new run: drop old sections, metrics and plots; write a fresh header."""
        logged = [name.removesuffix(".md") + ".json" for name in EXPECTED_FILES]
        for file_name in EXPECTED_FILES + logged + ["report.md"]:
            Path(self.report_dir, file_name).unlink(missing_ok=True)
        for folder in (self.metrics_dir, self.plots_dir):
            shutil.rmtree(folder, ignore_errors=True)
        header_file = os.path.join(self.report_dir, "header.md")
        with open(header_file, "w", encoding="utf-8") as f:
            f.write(generate_header())
            f.write(f"Run started: {now()}\n\n---\n\n")
        print(f"Reset report and wrote header to {header_file}")
        return header_file


class DummyReport:
    """What ranks other than 0 get: every call is a no-op."""

    def _noop(self, *args, **kwargs):
        pass
    log = log_metrics = reset = generate = _noop


def get_report():
    """The run's Report on rank 0 (in `<base>/report`), a DummyReport elsewhere."""
    from nanochat.common import get_base_dir, get_dist_info
    _, rank, _, _ = get_dist_info()
    return Report(os.path.join(get_base_dir(), "report")) if rank == 0 else DummyReport()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate or reset the nanochat training report.")
    parser.add_argument("command", nargs="?", default="generate", choices=["generate", "reset"],
                        help="generate: write report.md; reset: start a new run (default: generate)")
    args = parser.parse_args(argv)
    getattr(get_report(), args.command)()


if __name__ == "__main__":
    main()
