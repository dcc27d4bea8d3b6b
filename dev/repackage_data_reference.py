"""
How the reference pretraining shards were made (kept as documentation; not used at runtime,
never run by the tests, and it needs the internet and a lot of disk).

Source: Hugging Face dataset HuggingFaceFW/fineweb-edu, config "sample-100BT", split "train",
globally shuffled with seed 42. The documents are written in order into shard_XXXXX.parquet files
with nanochat.pack_corpus's ShardWriter: one string column `text`, row groups of exactly 1024 documents,
a shard closed at a row-group boundary once it holds >= 250M characters (~100 MB with zstd level 3,
no dictionary, no statistics). The folder is then uploaded as the dataset
karpathy/fineweb-edu-100b-shuffle (what nanochat.dataset.BASE_URL serves), token from $HF_TOKEN.

    python -m dev.repackage_data_reference --out_dir=/path/to/shards [--max_shards=2] [--upload]
"""

import argparse
import os
import time

from nanochat.common import host_reachable
from nanochat.pack_corpus import ShardWriter

SOURCE_DATASET = "HuggingFaceFW/fineweb-edu"
SOURCE_CONFIG = "sample-100BT"
SHUFFLE_SEED = 42
SHARD_CHARS = 250_000_000
UPLOAD_REPO = "karpathy/fineweb-edu-100b-shuffle"


def repackage(out_dir, max_shards=-1, shard_chars=SHARD_CHARS):
    from datasets import load_dataset
    ds = load_dataset(SOURCE_DATASET, name=SOURCE_CONFIG, split="train").shuffle(seed=SHUFFLE_SEED)
    print(f"{SOURCE_DATASET}/{SOURCE_CONFIG}: {len(ds):,} documents, shuffled with seed {SHUFFLE_SEED}")
    os.makedirs(out_dir, exist_ok=True)
    writer = ShardWriter(out_dir, shard_chars)
    start, total_docs = time.time(), 0
    for row in ds:
        shards_before = len(writer.written)
        writer.add(row["text"])
        total_docs += 1
        if len(writer.written) > shards_before:  # that document completed a shard
            shard = writer.written[-1]
            print(f"wrote {shard['name']}: {shard['docs']:,} docs, {shard['chars']:,} chars, "
                  f"{shard['bytes'] / 1e6:.1f} MB, {total_docs / (time.time() - start):,.0f} docs/s")
            if max_shards > 0 and len(writer.written) >= max_shards:
                break
    else:
        writer.close_shard()  # the tail of the dataset becomes a final, smaller shard
    print(f"done: {len(writer.written)} shards, {total_docs:,} documents in {out_dir}")


def main():
    parser = argparse.ArgumentParser(description="Rebuild (and optionally upload) the reference pretraining shards")
    parser.add_argument("--out_dir", required=True, help="folder to write shard_XXXXX.parquet into")
    parser.add_argument("--max_shards", type=int, default=-1, help="stop after this many shards (-1 = all)")
    parser.add_argument("--upload", action="store_true", help=f"upload the folder to {UPLOAD_REPO} (needs HF_TOKEN)")
    args = parser.parse_args()
    if not host_reachable("https://huggingface.co"):
        raise SystemExit("huggingface.co is unreachable: this script downloads the source dataset and needs the "
                         "internet. To build shards from local documents use python -m nanochat.dataset --from-jsonl.")
    repackage(args.out_dir, args.max_shards)
    if args.upload:
        from huggingface_hub import HfApi
        HfApi(token=os.environ.get("HF_TOKEN")).upload_large_folder(folder_path=args.out_dir, repo_id=UPLOAD_REPO,
                                                                    repo_type="dataset")


if __name__ == "__main__":
    main()
