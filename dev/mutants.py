"""
Deliberate one-line breakages of core behaviour, each of which the test suite must catch.

    python dev/mutants.py             # every mutant: prints killed/survived per mutant
    python dev/mutants.py --check     # only check that every pattern still matches exactly once (seconds)
    python dev/mutants.py --only sft-mask kv-cache-position

Each mutant replaces one exact piece of text in one file, in a temporary copy of the working tree
(the real checkout is never touched), then runs the tests that should notice. "killed" means they
failed; "survived" means the break went unnoticed: a hole in the tests. A pattern that no longer
matches exactly once is an error, not a skip, so a refactor cannot quietly retire a mutant: update
the pattern to the new code instead. It is a development tool, run by hand and by the slow suite.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file to break, relative to the repository
    pattern: str  # exact text, found exactly once
    replacement: str
    tests: tuple  # pytest arguments that select the tests which must catch it


MUTANTS = [
    Mutant("base-accumulation-division", "scripts/base_train.py",
           "(loss / accum_steps).backward()", "loss.backward()",
           ("tests/test_grad_accumulation.py::test_base_train_accumulation_equals_one_big_batch",)),
    Mutant("mid-accumulation-division", "scripts/mid_train.py",
           "(loss / accum_steps).backward()", "loss.backward()",
           ("tests/test_grad_accumulation.py::test_mid_train_accumulation_equals_one_big_batch",)),
    Mutant("sft-token-normalisation", "scripts/chat_sft.py",
           "(loss * scale).backward()", "(loss * world_size / max(int((y >= 0).sum()), 1)).backward()",
           ("tests/test_grad_accumulation.py::test_chat_sft_accumulation_equals_one_big_batch",)),
    Mutant("sft-mask", "nanochat/chat_data.py",
           "row_targets[mask_t == 0] = -1", "row_targets[mask_t == 1] = -1",
           ("tests/test_stage_behaviour.py::test_sft_loss_counts_only_the_assistant_tokens",)),
    Mutant("kv-cache-position", "nanochat/gpt.py",
           "T0 = 0 if kv_cache is None else kv_cache.get_pos()", "T0 = 0",
           ("tests/test_engine.py",)),
    Mutant("token-byte-lengths", "nanochat/tokenizer.py",
           "len(self.enc.decode_single_token_bytes(token_id))",
           "len(self.decode([token_id]).encode('utf-8'))",
           ("tests/test_tokenizer.py",)),
    Mutant("shard-sha256", "nanochat/dataset.py",
           "verify = None if sha256 is None else (lambda tmp_path: sha256_of(tmp_path) == sha256)", "verify = None",
           ("tests/test_dataset.py", "-k", "sha256")),
    Mutant("shard-manifest", "nanochat/dataset.py",
           "digests = load_sha256_manifest(sha256_manifest)", "digests = {}",
           ("tests/test_dataset.py", "-k", "manifest")),
    Mutant("core-context-crop", "nanochat/core_eval.py",
           "row[-max_seq_len:]", "row[:max_seq_len]",
           ("tests/test_core_eval.py",)),
    Mutant("core-fewshot-excludes-item", "nanochat/core_eval.py",
           "data[j + (j >= idx)]", "data[j]",
           ("tests/test_core_eval.py",)),
    Mutant("core-max-per-task-crop", "nanochat/core_eval.py",
           "num_examples = len(data) if max_examples is None else min(len(data), max_examples)",
           "num_examples = len(data)",
           ("tests/test_base_eval.py",)),
    Mutant("calculator-allow-list", "nanochat/calculator.py",
           "ast.FloorDiv: operator.floordiv}", "ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}",
           ("tests/test_calculator.py",)),
    Mutant("sandbox-bwrap-network", "nanochat/execution.py",
           '"--unshare-net", ', "",
           ("tests/test_execution.py",)),
    Mutant("sandbox-unshare-network", "nanochat/execution.py",
           '"--mount", "--net", "--pid",', '"--mount", "--pid",',
           ("tests/test_execution.py",)),
    Mutant("serving-row-packing", "nanochat/serving.py",
           "                self.cache.move_row(last, i)\n", "",
           ("tests/test_serving_batching.py::test_greedy_reply_is_the_same_alone_and_batched",)),
    Mutant("serving-stop-holdback", "nanochat/serving.py",
           "        keep = max((k for s", "        keep = 0 and max((k for s",
           ("tests/test_serving_batching.py::test_stop_string_across_token_boundaries",)),
    Mutant("serving-prompt-logprob-shift", "nanochat/serving.py",
           "logits[:-1].float()", "logits[1:].float()",
           ("tests/test_serving_batching.py::test_completions_echo_scores_the_prompt_like_a_forward_pass",)),
]


def copy_tree(repo, dest):
    """Copy the working tree as git sees it (tracked plus untracked, not ignored) to dest."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True)
    for rel in filter(None, out.stdout.decode().split("\0")):
        if not os.path.isfile(os.path.join(repo, rel)):  # deleted but still in the index, or a submodule
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(repo, rel), target)


def check_pattern(root, mutant):
    """The file's text, with an error naming the mutant unless its pattern occurs exactly once."""
    path = os.path.join(root, mutant.path)
    if not os.path.exists(path):
        raise SystemExit(f"mutant {mutant.name}: {mutant.path} does not exist; update dev/mutants.py")
    text = Path(path).read_text(encoding="utf-8")
    count = text.count(mutant.pattern)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: pattern {mutant.pattern!r} occurs {count} times in {mutant.path} "
                         "(expected exactly once); update dev/mutants.py to the current code")
    return text


def run_tests(root, tests, log_path):
    """pytest's exit status for `tests` in the tree at `root` (its output goes to log_path)."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=tempfile.mkdtemp(prefix="mutant_base_"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    with open(log_path, "w") as log:
        return subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that every pattern matches once")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and the pytest logs")
    args = parser.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            raise SystemExit(f"unknown mutant(s) {unknown}; known: {', '.join(m.name for m in MUTANTS)}")
        mutants = [m for m in MUTANTS if m.name in args.only]
    for mutant in mutants:
        check_pattern(REPO, mutant)
    if args.check:
        print(f"all {len(mutants)} mutant patterns match exactly once")
        return 0

    # several of the tests read the data pack; a copy in /tmp has none beside it, so it is found from here
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import data_pack_dir  # importing it defaults NANOCHAT_DATA_PACK to a pack beside the checkout
    if data_pack_dir() is None:
        raise SystemExit("the mutants' tests need the data pack: set NANOCHAT_DATA_PACK to its folder")

    work = tempfile.mkdtemp(prefix="nanochat_mutants_")
    root = os.path.join(work, "repo")
    copy_tree(REPO, root)
    print(f"copy of the working tree: {root}")
    # the tests must pass on the unbroken copy, or "killed" would mean nothing
    baseline = sorted({t for m in mutants for t in m.tests if t.startswith("tests/")})
    status = run_tests(root, baseline, os.path.join(work, "baseline.log"))
    if status != 0:
        print(f"the tests fail on the unbroken tree (pytest exit {status}); see {work}/baseline.log")
        return 2

    rows = []
    for mutant in mutants:
        path = Path(root, mutant.path)
        original = check_pattern(root, mutant)
        path.write_text(original.replace(mutant.pattern, mutant.replacement), encoding="utf-8")
        start = time.time()
        status = run_tests(root, mutant.tests, os.path.join(work, f"{mutant.name}.log"))
        path.write_text(original, encoding="utf-8")
        # 1: tests failed (caught); 0: all passed (missed); anything else: pytest could not run them
        verdict = {0: "SURVIVED", 1: "killed"}.get(status, f"ERROR (pytest exit {status})")
        rows.append((mutant.name, mutant.path, verdict, time.time() - start))
        print(f"{mutant.name}: {verdict}", flush=True)

    print(f"\n{'mutant':<28} {'file':<24} {'result':<24} {'seconds':>7}")
    print("-" * 86)
    for name, path, verdict, seconds in rows:
        print(f"{name:<28} {path:<24} {verdict:<24} {seconds:>7.1f}")
    killed = sum(verdict == "killed" for _, _, verdict, _ in rows)
    print(f"\n{killed}/{len(rows)} killed")
    if args.keep:
        print(f"logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
