"""
Pretraining shards: name, download, verify and iterate them.

Online, shards of FineWeb-Edu-100B (reshuffled) are downloaded from BASE_URL into <base>/base_data.
Offline, a local corpus of JSONL documents is packed into shards of the same format with `--from-jsonl`,
or a data pack's corpus ($NANOCHAT_DATA_PACK) is packed automatically (nanochat/pack_corpus.py).
In every case the last shard (sorted by name) is the validation split.

    python -m nanochat.dataset -n 8                  # download shards 0..7 (or pack the data pack)
    python -m nanochat.dataset --from-jsonl a.jsonl.gz b.jsonl.gz
"""

import argparse
import functools
import hashlib
import os
import sys

from nanochat.common import DownloadError, get_base_dir, get_data_pack_dir, host_reachable, stream_download

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # shards 0..1822
ROW_GROUP_SIZE = 1024  # documents per parquet row group


class ShardError(RuntimeError):
    """A shard or corpus file that cannot be used; the message names the file and what to do."""


def index_to_filename(index):
    return f"shard_{index:05d}.parquet"


def get_data_dir():
    """<base>/base_data, resolved now so that a changed $NANOCHAT_BASE_DIR is honoured."""
    data_dir = os.path.join(get_base_dir(), "base_data")
    os.makedirs(data_dir, exist_ok=True)
    return data_dir


def __getattr__(name):
    # `nanochat.dataset.DATA_DIR` is looked up lazily (PEP 562) instead of being fixed at import
    if name == "DATA_DIR":
        return get_data_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_base_url():
    return os.environ.get("NANOCHAT_SHARD_BASE_URL") or BASE_URL


def _shard_count(num_files):  # -n: -1 = all
    return MAX_SHARD + 1 if num_files == -1 else min(num_files, MAX_SHARD + 1)


# -----------------------------------------------------------------------------
# Reading

def list_parquet_files(data_dir=None):
    """Sorted full paths of the finished shards (`*.parquet`; transient `*.tmp` files are skipped)."""
    data_dir = data_dir or get_data_dir()
    return sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.endswith(".parquet"))


def split_files(split, data_dir=None):
    """The shards of a split: the last shard is "val", all the others are "train"."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data_dir = data_dir or get_data_dir()
    files = list_parquet_files(data_dir)
    if len(files) < 2:
        raise FileNotFoundError(
            f"found {len(files)} shard(s) in {data_dir}; need at least 2 (the last one is the validation split). "
            "Run `python -m nanochat.dataset -n 8` to download shards, or pack a local corpus with "
            "`python -m nanochat.dataset --from-jsonl FILE...` (or set NANOCHAT_DATA_PACK).")
    return files[:-1] if split == "train" else files[-1:]


def open_shard(path):
    """A shard as a pyarrow ParquetFile, checked to be readable with one string `text` column (other columns,
    such as `id` or `url` in public corpora, are ignored like in the original)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{path} is not a readable parquet shard ({e}). It is probably truncated or corrupt: "
                         "delete it and download or pack it again (python -m nanochat.dataset).") from None
    schema = pf.schema_arrow
    text_type = schema.field("text").type if schema.names.count("text") == 1 else None
    if text_type is None or not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise ShardError(f"{path} has schema {schema.names} ({schema.types}); a shard needs one string column "
                         "named 'text'. Re-create it with python -m nanochat.dataset --from-jsonl.")
    return pf


def read_row_group(pf, rg_idx, path="shard"):
    """The `text` column of one row group as a list of str."""
    import pyarrow as pa
    try:
        return pf.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"could not read row group {rg_idx} of {path} ({e}); the shard is corrupt: "
                         "delete it and download or pack it again.") from None


def parquets_iter_batched(split, start=0, step=1, data_dir=None):
    """Yield the documents of each row group (index start, start+step, ...) of each shard of the split."""
    for path in split_files(split, data_dir):
        pf = open_shard(path)
        for rg_idx in range(start, pf.num_row_groups, step):
            yield read_row_group(pf, rg_idx, path)


# -----------------------------------------------------------------------------
# Downloading (with optional sha256 verification)

def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_sha256_manifest(path=None):
    """{filename: hex digest} from a `sha256sum`-style file (`<hex>  <filename>` per line), or {}."""
    path = path or os.environ.get("NANOCHAT_SHARD_SHA256")
    if not path:
        return {}
    if not os.path.exists(path):
        raise FileNotFoundError(f"sha256 manifest {path} does not exist "
                                "(named by --sha256-manifest or NANOCHAT_SHARD_SHA256)")
    digests = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or len(parts[0]) != 64:
                raise ValueError(f"{path}:{lineno}: expected '<sha256 hex>  <filename>', got {line.strip()!r}")
            digests[os.path.basename(parts[1].lstrip("*"))] = parts[0].lower()
    return digests


def download_single_file(index, base_url=None, data_dir=None, sha256=None, max_attempts=5, backoff_base=2.0):
    """Fetch shard `index` unless present (and matching `sha256`, if given); False once the retries are spent.
    The bytes arrive in `<file>.tmp` and are checked before the rename: a partial `.parquet` is never visible."""
    from filelock import FileLock
    data_dir = data_dir or get_data_dir()
    filename = index_to_filename(index)
    path = os.path.join(data_dir, filename)
    url = f"{(base_url or get_base_url()).rstrip('/')}/{filename}"
    with FileLock(path + ".lock"):
        if os.path.exists(path):
            if sha256 is None or sha256_of(path) == sha256:
                print(f"Skipping {path} (already exists)")
                return True
            print(f"{path} does not match its sha256; deleting and downloading it again")
            os.remove(path)
        verify = None if sha256 is None else (lambda tmp_path: sha256_of(tmp_path) == sha256)
        try:
            stream_download(url, path, max_attempts=max_attempts, backoff_base=backoff_base, verify=verify)
        except DownloadError as e:
            print(f"Failed to download {filename}: {e}")
            return False
        print(f"Downloaded {filename}")
        return True


def offline_hint(data_dir, base_url):
    return (f"Could not download shards from {base_url}. To train without internet, use a local corpus:\n"
            "  python -m nanochat.dataset --from-jsonl part_0.jsonl.gz part_1.jsonl.gz ...\n"
            "(one {\"text\": ...} per line; the last file becomes the validation shard), or set\n"
            "  NANOCHAT_DATA_PACK=<data pack dir>  and re-run  python -m nanochat.dataset -n N\n"
            f"to pack the pack's corpus/ (see docs/data_pack.md). Shards live in {data_dir}; you can also "
            "copy shard_XXXXX.parquet files there by hand or point NANOCHAT_SHARD_BASE_URL at a mirror.")


def download_shards(num_files=-1, num_workers=4, base_url=None, data_dir=None, sha256_manifest=None):
    """Download shards 0..num_files-1 in a process pool; returns the number present afterwards."""
    from multiprocessing import Pool
    from tqdm import tqdm
    data_dir = data_dir or get_data_dir()
    base_url = base_url or get_base_url()
    n = _shard_count(num_files)
    digests = load_sha256_manifest(sha256_manifest)
    missing = [i for i in range(n) if not os.path.exists(os.path.join(data_dir, index_to_filename(i)))]
    if missing and not host_reachable(base_url):
        raise DownloadError(offline_hint(data_dir, base_url))  # seconds, not minutes of retries
    print(f"Downloading {n} shards using {num_workers} workers to {data_dir}")
    jobs = [(i, digests.get(index_to_filename(i))) for i in range(n)]
    fetch = functools.partial(_download_job, base_url=base_url, data_dir=data_dir)
    with Pool(processes=max(1, num_workers)) as pool:
        ok = sum(tqdm(pool.imap_unordered(fetch, jobs), total=n, desc="shards", unit="shard"))
    print(f"Done! downloaded {ok}/{n} shards to {data_dir}")
    return ok


def _download_job(job, base_url, data_dir):
    index, digest = job
    return download_single_file(index, base_url=base_url, data_dir=data_dir, sha256=digest)


# -----------------------------------------------------------------------------
# CLI

def main(argv=None):
    from nanochat.pack_corpus import DEFAULT_SHARD_CHARS, pack_data_pack_corpus, pack_jsonl  # it builds on this module
    parser = argparse.ArgumentParser(
        description="Download FineWeb-Edu pretraining shards, or pack a local corpus into shards")
    parser.add_argument("-n", "--num-files", type=int, default=-1,
                        help="number of shards to download (default: -1 = all 1823)")
    parser.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads (default: 4)")
    parser.add_argument("--from-jsonl", nargs="+", metavar="FILE",
                        help="pack these .jsonl/.jsonl.gz files ({\"text\": ...} per line) instead of downloading; "
                             "the last file becomes the validation shard")
    parser.add_argument("--shard-chars", type=int, default=DEFAULT_SHARD_CHARS,
                        help=f"characters per packed shard (default {DEFAULT_SHARD_CHARS}; "
                             "the reference uses 250000000)")
    parser.add_argument("--force", action="store_true", help="let --from-jsonl replace shards packed from other inputs")
    parser.add_argument("--sha256-manifest", default=None,
                        help="sha256sum-style file to verify downloaded shards (or env NANOCHAT_SHARD_SHA256)")
    parser.add_argument("--base-url", default=None,
                        help="download from this URL instead of BASE_URL (or env NANOCHAT_SHARD_BASE_URL)")
    args = parser.parse_args(argv)
    if args.num_files < -1 or args.num_files == 0:
        parser.error(f"-n/--num-files must be -1 (all) or a positive count, got {args.num_files}")
    data_dir = get_data_dir()
    try:
        if args.from_jsonl:
            pack_jsonl(args.from_jsonl, data_dir, args.shard_chars, args.force)
            return 0
        if args.base_url is None and get_data_pack_dir() is not None and \
                pack_data_pack_corpus(data_dir, args.shard_chars, args.force):
            return 0
        ok = download_shards(args.num_files, args.num_workers, args.base_url, data_dir, args.sha256_manifest)
        if ok < _shard_count(args.num_files):
            print(offline_hint(data_dir, args.base_url or get_base_url()), file=sys.stderr)
            return 1
        return 0
    except (ShardError, DownloadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # run the imported module's main: its ShardError is the one pack_corpus raises, not __main__'s copy
    from nanochat.dataset import main as imported_main
    sys.exit(imported_main())
