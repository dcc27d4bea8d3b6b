"""
Training-curve plots for the report card: reads the `<report>/metrics/<slug>.jsonl` files that
stages append through `Report.log_metrics` and draws one PNG per stage (`<report>/plots/<slug>.png`),
one panel per recorded metric over steps. Matplotlib's Agg backend works without a display.
"""

import glob
import json
import math
import os

# Panels in this order first (known metrics with readable titles), then any other key alphabetically.
KNOWN_METRICS = {
    "train_loss": "train loss",
    "val_bpb": "validation bits per byte",
    "core_metric": "CORE metric",
    "val_loss": "validation loss",
    "train_bpb": "train bits per byte",
    "reward": "mean reward",
    "lrm": "learning-rate multiplier",
}
LINE_COLOR = "#667eea"  # the logo's gradient start


def read_metrics(path):
    """{metric: ([steps], [values])} from one JSONL file; a step logged twice keeps its last value."""
    by_metric = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                print(f"Warning: skipping unreadable line {line_number} of {path}")
                continue
            step = record.pop("step", None)
            if step is None:
                continue
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    by_metric.setdefault(key, {})[step] = value
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_metric.items()}


def metric_order(names):
    known = [name for name in KNOWN_METRICS if name in names]
    return known + sorted(name for name in names if name not in KNOWN_METRICS)


def plot_stage(title, metrics, out_path):
    """Draw one stage's curves side by side and save them as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_order(metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        steps, values = metrics[name]
        marker = "o" if len(steps) <= 30 else None  # sparse evaluations read better as dots
        ax.plot(steps, values, color=LINE_COLOR, marker=marker, markersize=3, linewidth=1.5)
        ax.set_title(KNOWN_METRICS.get(name, name), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(steps) == 1:
            ax.annotate(f"{values[0]:.4g}", (steps[0], values[0]), textcoords="offset points", xytext=(5, 5))
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_all_stages(metrics_dir, plots_dir, relative_to=None):
    """Plot every `<slug>.jsonl` in metrics_dir; returns {slug: png path (relative to `relative_to`)}."""
    plots = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(metrics_dir), "*.jsonl"))):
        slug = os.path.basename(path).removesuffix(".jsonl")
        metrics = read_metrics(path)
        if not metrics:
            continue
        title = slug.replace("-", " ").capitalize()
        out_path = plot_stage(title, metrics, os.path.join(plots_dir, f"{slug}.png"))
        plots[slug] = os.path.relpath(out_path, relative_to) if relative_to else out_path
    return plots
