"""
Evaluate a base model on the CORE suite (DCLM): the local base checkpoint, or a Hugging Face model.

    python -m scripts.base_eval                    # latest base checkpoint
    python -m scripts.base_eval --max-per-task=16  # quick look
    python -m scripts.base_eval --hf-path=openai-community/gpt2
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval

The eval bundle comes from <base>/eval_bundle, the data pack's eval_bundle/, or a download. A task whose
data file is missing is skipped with a warning, and the metric is labelled "CORE over N of 22 tasks".
"""

import argparse
import csv
import json
import os
import random
import shutil
import tempfile
import time

from nanochat.common import (autocast_context, autodetect_device_type, compute_cleanup, compute_init, data_pack_path,
                             download_file_with_lock, get_base_dir, print0)
from nanochat.core_eval import evaluate_task, split_malformed

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
CORE_TASK_COUNT = 22


def place_eval_bundle(file_path):
    """Unzip the downloaded bundle and move its eval_bundle/ folder to <base>/eval_bundle."""
    destination = os.path.join(get_base_dir(), "eval_bundle")
    with tempfile.TemporaryDirectory() as tmpdir:
        shutil.unpack_archive(file_path, tmpdir, format="zip")
        shutil.move(os.path.join(tmpdir, "eval_bundle"), destination)
    print0(f"Placed eval_bundle directory at {destination}")


def get_eval_bundle_dir():
    """<base>/eval_bundle if present, else the data pack's copy (read in place), else download it."""
    local = os.path.join(get_base_dir(), "eval_bundle")
    for candidate in (local, data_pack_path("eval_bundle")):
        if candidate is not None and os.path.isdir(candidate):
            return candidate
    hint = (f"Download {EVAL_BUNDLE_URL} and unzip it so that {local}/core.yaml exists, "
            "or set NANOCHAT_DATA_PACK to a data pack that has eval_bundle/.")
    download_file_with_lock(EVAL_BUNDLE_URL, "eval_bundle.zip", postprocess_fn=place_eval_bundle, offline_hint=hint)
    return local


def load_core_tasks(bundle_dir):
    """The task entries of core.yaml, each with a resolved file path."""
    import yaml
    with open(os.path.join(bundle_dir, "core.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    return [dict(label=entry["label"], task_type=entry["icl_task_type"], dataset_uri=entry["dataset_uri"],
                 num_fewshot=entry["num_fewshot"][0],
                 continuation_delimiter=entry.get("continuation_delimiter", " "),
                 path=os.path.join(bundle_dir, "eval_data", entry["dataset_uri"]))
            for entry in config["icl_tasks"]]


def load_random_baselines(bundle_dir):
    """{task label: random-guess accuracy in percent} from eval_meta_data.csv."""
    with open(os.path.join(bundle_dir, "eval_meta_data.csv"), encoding="utf-8") as f:
        return {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}


def load_task_rows(path):
    """(rows, number of non-blank lines that are not valid JSON)."""
    rows, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in filter(str.strip, f):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad


def core_label(num_done, skipped):
    """'CORE' only when every task ran; otherwise say over how many and which were skipped."""
    if not skipped:
        return "CORE"
    # no ':' here: the report card reads a metric as the text after the first colon
    return f"CORE over {num_done} of {CORE_TASK_COUNT} tasks ({', '.join(skipped)} skipped, not the full CORE)"


def evaluate_model(model, tokenizer, device, max_per_task=-1):
    """Run every CORE task. Returns {"results", "centered_results", "core_metric"} as the reference, plus
    "core_label", "skipped_tasks" and "malformed" (per task count of rows that were left out)."""
    bundle_dir = get_eval_bundle_dir()
    tasks = load_core_tasks(bundle_dir)
    baselines = load_random_baselines(bundle_dir)
    results, centered_results, malformed, skipped = {}, {}, {}, []
    for task in tasks:
        label = task["label"]
        if not os.path.exists(task["path"]):
            print0(f"WARNING: skipping CORE task {label}: {task['path']} is missing from the eval bundle")
            skipped.append(label)
            continue
        start = time.time()
        print0(f"Evaluating: {label} ({task['num_fewshot']}-shot, type: {task['task_type']})... ", end="")
        data, bad_json = load_task_rows(task["path"])
        data, bad_rows = split_malformed(data, task["task_type"])
        random.Random(1337).shuffle(data)
        stats = {}
        accuracy = evaluate_task(model, tokenizer, data, device, task, stats=stats,
                                 max_examples=max_per_task if max_per_task > 0 else None)
        malformed[label] = bad_json + bad_rows + stats.get("malformed", 0)
        if label not in baselines:
            print0(f"\nWARNING: {label} has no random baseline in eval_meta_data.csv; using 0")
        baseline = baselines.get(label, 0.0)
        centered = (accuracy - 0.01 * baseline) / (1.0 - 0.01 * baseline)
        results[label], centered_results[label] = accuracy, centered
        note = f" | {malformed[label]} malformed rows left out" if malformed[label] else ""
        print0(f"accuracy: {accuracy:.4f} | centered: {centered:.4f} | time: {time.time() - start:.2f}s{note}")
    core_metric = sum(centered_results.values()) / len(centered_results) if centered_results else float("nan")
    return {"results": results, "centered_results": centered_results, "core_metric": core_metric,
            "core_label": core_label(len(centered_results), skipped), "skipped_tasks": skipped,
            "malformed": malformed}


class ModelWrapper:
    """Calls a Hugging Face causal LM like our GPT: input ids in, logits out."""

    def __init__(self, model, max_seq_len=None):
        self.model = model
        self.max_seq_len = max_seq_len

    def __call__(self, input_ids):
        return self.model(input_ids).logits


def load_hf_model(hf_path, device):
    from transformers import AutoModelForCausalLM
    from nanochat.tokenizer import HuggingFaceTokenizer
    print0(f"Loading model from: {hf_path}")
    model = AutoModelForCausalLM.from_pretrained(hf_path).to(device).eval()
    # longer prompts are left-cropped to the model's context (GPT-2: 1024); past it, positions do not exist
    max_seq_len = getattr(model.config, "max_position_embeddings", None)
    return ModelWrapper(model, max_seq_len=max_seq_len), HuggingFaceTokenizer.from_pretrained(hf_path)


def write_csv(path, out):
    """Task, Accuracy, Centered rows padded to 35/10/10, then the CORE row."""
    lines = [f"{'Task':<35}, {'Accuracy':<10}, {'Centered':<10}"]
    for label, accuracy in out["results"].items():
        lines.append(f"{label:<35}, {accuracy:<10.6f}, {out['centered_results'][label]:<10.6f}")
    lines += [f"{label:<35}, {'skipped':<10}, {'skipped':<10}" for label in out["skipped_tasks"]]
    core_name = "CORE" if not out["skipped_tasks"] else f"CORE_{len(out['results'])}of{CORE_TASK_COUNT}"
    lines.append(f"{core_name:<35}, {'':<10}, {out['core_metric']:<10.6f}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description="Evaluate a base model on the CORE suite")
    parser.add_argument("--hf-path", type=str, default=None,
                        help="evaluate this HuggingFace model instead of the local base model")
    parser.add_argument("--max-per-task", type=int, default=-1, help="crop each task to this many examples (-1 = all)")
    args = parser.parse_args()

    device_type = autodetect_device_type()
    _, rank, _, _, device = compute_init(device_type)

    if args.hf_path is not None:
        model, tokenizer = load_hf_model(args.hf_path, device)
        model_name, model_slug = args.hf_path, args.hf_path.replace("/", "-")
    else:
        from nanochat.checkpoint_manager import load_model
        model, tokenizer, meta = load_model("base", device, phase="eval")
        step = meta.get("step", 0)
        model_name, model_slug = f"base_model (step {step})", f"base_model_{step:06d}"

    with autocast_context(device_type):
        out = evaluate_model(model, tokenizer, device, max_per_task=args.max_per_task)

    if rank == 0:
        csv_path = os.path.join(get_base_dir(), "base_eval", f"{model_slug}.csv")
        table = write_csv(csv_path, out)
        print0("=" * 80)
        print0(f"Model: {model_name}")
        print0("=" * 80)
        print0(table)
        print0(f"Wrote {csv_path}")
        summary = {"Model": model_name, f"{out['core_label']} metric": out["core_metric"]}
        if out["skipped_tasks"]:
            summary["Skipped tasks (data file missing)"] = ", ".join(out["skipped_tasks"])
        total_bad = sum(out["malformed"].values())
        if total_bad:
            print0(f"Malformed rows left out: {total_bad} ({ {k: v for k, v in out['malformed'].items() if v} })")
            summary["Malformed rows left out"] = total_bad
        from nanochat.report import get_report
        get_report().log(section="Base model evaluation", data=[summary, out["centered_results"]])
    compute_cleanup()


if __name__ == "__main__":
    main()
