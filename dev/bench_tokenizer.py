"""Benchmark tokenizer training and encoding against our peers, in one run.

On the same text and vocab sizes it trains BPE, each in its own subprocess using all cores, with
  (a) our `rustbpe` (this repository's Rust extension),
  (b) PyPI's `rustbpe` (the same module name, so it is installed into a separate folder and imported from there),
  (c) HF `tokenizers`, its BpeTrainer set up as nanochat's HuggingFaceTokenizer (byte-level, same split regex,
      no special tokens),
then encodes the same text with tiktoken built from our ranks and from PyPI's (fresh subprocesses,
alternating). It prints the timings, the ratios to the peers, and whether our merges equal PyPI's.

    python -m dev.bench_tokenizer                      # 50 MB, vocab 32768 and 65536
    python -m dev.bench_tokenizer --mb 10 --vocab-sizes 4096
    python -m dev.bench_tokenizer --corpus-dir DIR --pypi-dir DIR

Text: `part_*.jsonl.gz` files (one `{"text": ...}` per line) in --corpus-dir (default `$NANOCHAT_DATA_PACK/corpus`).
"""

import argparse
import glob
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# nanochat for the workers, which run outside the repository (see call_worker); appended, so it shadows nothing
sys.path.append(str(Path(__file__).resolve().parents[1]))
from nanochat.tokenizer import SPLIT_PATTERN, byte_level_pre_tokenizer  # noqa: E402

PYPI_RUSTBPE = "rustbpe==0.1.0"


# Workers: each runs in its own subprocess (see call_worker)
def train_rustbpe(docs, vocab_size):
    import rustbpe

    tok = rustbpe.Tokenizer()
    start, cpu = time.perf_counter(), time.process_time()
    tok.train_from_iterator(iter(docs), vocab_size, pattern=SPLIT_PATTERN)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    ranks = [bytes(k) for k, _ in sorted(tok.get_mergeable_ranks(), key=lambda kv: kv[1])]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "ranks": ranks, "module": rustbpe.__file__}


def train_hf(docs, vocab_size):
    import tokenizers
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = byte_level_pre_tokenizer()  # no normalizer: the default
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    start, cpu = time.perf_counter(), time.process_time()
    tok.train_from_iterator(iter(docs), trainer)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "vocab": tok.get_vocab_size(),
            "module": f"tokenizers {tokenizers.__version__}"}


def encode_tiktoken(texts, ranks, repeats):
    """Best-of-`repeats` wall and CPU seconds of tiktoken's encode_ordinary_batch with `ranks`."""
    import hashlib
    from array import array

    import tiktoken

    enc = tiktoken.Encoding(name="bench", pat_str=SPLIT_PATTERN,
                            mergeable_ranks={b: i for i, b in enumerate(ranks)}, special_tokens={})
    threads = os.cpu_count() or 1
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        ids = enc.encode_ordinary_batch(texts, num_threads=threads)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    digest = hashlib.sha256()
    for row in ids:
        digest.update(array("I", row).tobytes() + b"|")
    return {"seconds": wall, "cpu_seconds": cpu, "ids_sha256": digest.hexdigest()}


def save_pickle(obj, path):
    Path(path).write_bytes(pickle.dumps(obj))
    return path


def load_pickle(path):
    return pickle.loads(Path(path).read_bytes())


def worker_main(job_path):
    """Run the job call_worker pickled to job_path; its result is pickled next to it."""
    job = load_pickle(job_path)
    worker = {"encode": encode_tiktoken, "hf": train_hf}.get(job.pop("kind"), train_rustbpe)
    save_pickle(worker(load_pickle(job.pop("docs")), **job), job_path + ".out")


# Orchestration
def take_bytes(docs, max_bytes):
    """The first documents, up to the one that reaches max_bytes of UTF-8; (documents, their bytes)."""
    out, size = [], 0
    for d in docs:
        if size >= max_bytes:
            break
        out.append(d)
        size += len(d.encode("utf-8"))
    return out, size


def load_docs(corpus_dir, max_bytes):
    files = sorted(glob.glob(os.path.join(corpus_dir, "part_*.jsonl.gz")))
    if not files:
        sys.exit(f"no part_*.jsonl.gz files in {corpus_dir!r}: pass --corpus-dir or set NANOCHAT_DATA_PACK")

    def texts():
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                yield from (json.loads(line)["text"] for line in f)

    docs, size = take_bytes(texts(), max_bytes)
    if size < max_bytes:
        print(f"note: the corpus holds only {size / 1e6:.1f} MB; using all of it")
    return docs, size


def ensure_pypi_rustbpe(target):
    """Installs PyPI's rustbpe into `target` (not into the environment, where ours lives)."""
    if glob.glob(os.path.join(target, "rustbpe", "*.so")) + glob.glob(os.path.join(target, "rustbpe", "*.pyd")):
        return
    os.makedirs(target, exist_ok=True)
    pip = ["uv", "pip", "install", "--python", sys.executable] if shutil.which("uv") else \
        [sys.executable, "-m", "pip", "install"]
    print("installing", PYPI_RUSTBPE, "into", target)
    subprocess.run([*pip, "--quiet", "--target", target, PYPI_RUSTBPE], check=True)


def call_worker(workdir, name, env=None, **job):
    """The result of worker_main(job) in a fresh subprocess of this file."""
    path = save_pickle(job, os.path.join(workdir, f"{name}.job"))
    # Run outside the repository so the rustbpe/ source folder cannot shadow a module.
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path], check=True, env=env, cwd=workdir)
    return load_pickle(path + ".out")


def train_worker(kind, docs_path, vocab_size, workdir, pypi_dir):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if kind == "pypi":
        env["PYTHONPATH"] = pypi_dir
    return call_worker(workdir, f"{kind}_{vocab_size}", env=env, kind=kind, docs=docs_path, vocab_size=vocab_size)


def check_modules(results, pypi_dir):
    ours, pypi = results["ours"]["module"], results["pypi"]["module"]
    if not os.path.realpath(pypi).startswith(os.path.realpath(pypi_dir)):
        sys.exit(f"PyPI rustbpe was not imported from {pypi_dir}: {pypi}")
    if os.path.realpath(ours).startswith(os.path.realpath(pypi_dir)):
        sys.exit(f"our rustbpe resolved to the PyPI copy: {ours}")


def compare_merges(ours, pypi):
    if ours == pypi:
        return f"identical ({len(ours) - 256} merges)"
    first = next((i for i, (a, b) in enumerate(zip(ours, pypi)) if a != b), min(len(ours), len(pypi)))
    return (f"DIFFERENT: first difference at rank {first} "
            f"(ours {ours[first:first + 1]}, PyPI {pypi[first:first + 1]}; sizes {len(ours)} vs {len(pypi)})")


def time_encode(ranks_by_name, texts_path, repeats, workdir):
    """Encode timings per rank set: each set is timed in fresh subprocesses, in
    alternating order over two rounds, so neither gets a warmer process or heap."""
    per_round = max(1, (repeats + 1) // 2)
    best, names = {}, list(ranks_by_name)
    for order in (names, names[::-1]):
        for name in order:
            r = call_worker(workdir, f"encode_{name}", kind="encode", docs=texts_path, ranks=ranks_by_name[name],
                            repeats=per_round)
            kept = best.setdefault(name, r)
            for key in ("seconds", "cpu_seconds"):
                kept[key] = min(kept[key], r[key])
    return best


def seconds_cell(r):
    return f"{r['seconds']:.2f} [{r['cpu_seconds']:.2f}]" if r else "-"


def ratio_cell(r, ours):
    return f"{r['seconds'] / ours['seconds']:.2f}x [{r['cpu_seconds'] / ours['cpu_seconds']:.2f}x]" if r else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50, help="MB of text to train on (default 50)")
    parser.add_argument("--vocab-sizes", default="32768,65536", help="comma-separated vocab sizes")
    parser.add_argument("--encode-mb", type=float, default=10, help="MB of the same text to encode (default 10)")
    parser.add_argument("--encode-repeats", type=int, default=6, help="encode runs per contender; the best counts")
    parser.add_argument("--corpus-dir", default=None,
                        help="folder with part_*.jsonl.gz (default $NANOCHAT_DATA_PACK/corpus)")
    parser.add_argument("--pypi-dir", default=None,
                        help="folder with PyPI rustbpe installed (default: install into a temp folder)")
    parser.add_argument("--skip-hf", action="store_true", help="leave HF tokenizers out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the job file of a subprocess worker
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)

    corpus_dir = args.corpus_dir or os.path.join(os.environ.get("NANOCHAT_DATA_PACK", ""), "corpus")
    vocab_sizes = [int(v) for v in args.vocab_sizes.split(",")]
    docs, size = load_docs(corpus_dir, int(args.mb * 1e6))
    workdir = tempfile.mkdtemp(prefix="bench_tokenizer_")
    pypi_dir = args.pypi_dir or os.path.join(workdir, "pypi_rustbpe")
    ensure_pypi_rustbpe(pypi_dir)
    docs_path = save_pickle(docs, os.path.join(workdir, "docs.pkl"))
    encode_texts, encode_size = take_bytes(docs, int(args.encode_mb * 1e6))
    encode_path = save_pickle(encode_texts, os.path.join(workdir, "encode_docs.pkl"))

    print(f"text: {size / 1e6:.1f} MB in {len(docs)} documents from {corpus_dir}")
    print(f"split pattern: nanochat (\\p{{N}}{{1,2}}); CPUs: {os.cpu_count()}; python {sys.version.split()[0]}")
    rows = []
    for vocab_size in vocab_sizes:
        print(f"\n=== vocab size {vocab_size} ===")
        results = {}
        for kind in ["ours", "pypi"] + ([] if args.skip_hf else ["hf"]):
            r = results[kind] = train_worker(kind, docs_path, vocab_size, workdir, pypi_dir)
            print(f"  train {kind:5s} {r['seconds']:8.2f} s wall {r['cpu_seconds']:8.2f} s cpu   [{r['module']}]")
        check_modules(results, pypi_dir)
        merges = compare_merges(results["ours"]["ranks"], results["pypi"]["ranks"])
        print(f"  merges ours vs PyPI rustbpe: {merges}")
        enc = time_encode({"ours": results["ours"]["ranks"], "pypi": results["pypi"]["ranks"]},
                          encode_path, args.encode_repeats, workdir)
        for name, r in enc.items():
            print(f"  encode {name:5s} {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s cpu"
                  f"  {encode_size / 1e6 / r['seconds']:6.1f} MB/s  "
                  f"({encode_size / 1e6:.1f} MB, tiktoken encode_ordinary_batch)")
        print(f"  encoded ids identical: {enc['ours']['ids_sha256'] == enc['pypi']['ids_sha256']}")
        rows.append((vocab_size, results, enc, merges))

    print("\n=== summary (ratio = peer / ours, higher is better; "
          "wall seconds, CPU seconds of all threads in brackets) ===")
    print(f"{'vocab':>6} {'ours':>14} {'PyPI rustbpe':>14} {'HF':>14} {'vs PyPI':>14} {'vs HF':>14}"
          f" {'enc ours':>14} {'enc PyPI':>14} {'enc ratio':>14}  merges vs PyPI")
    for vocab_size, results, enc, merges in rows:
        ours, o, p = results["ours"], enc["ours"], enc["pypi"]
        cells = [seconds_cell(results.get(kind)) for kind in ("ours", "pypi", "hf")]
        cells += [ratio_cell(results.get(kind), ours) for kind in ("pypi", "hf")]
        print(f"{vocab_size:>6} " + " ".join(f"{c:>14}" for c in cells) +
              f" {o['seconds']:>6.2f} [{o['cpu_seconds']:.2f}] {p['seconds']:>6.2f} [{p['cpu_seconds']:.2f}]"
              f" {p['seconds'] / o['seconds']:>6.2f}x [{p['cpu_seconds'] / o['cpu_seconds']:.2f}x]  "
              f"{merges.split(' (')[0]}")
    print("targets: train >= 1.3x PyPI rustbpe and >= 2x HF tokenizers; encode ratio >= 1.0 (equal merges"
          " give equal tiktoken tables, so that ratio is 1.0 up to timing noise)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
