"""
Pretraining shards: name, download, verify, pack and iterate them.

Online, shards of FineWeb-Edu-100B (reshuffled) are downloaded from BASE_URL into
<base>/base_data. Offline, a local corpus of JSONL documents is packed into shards of exactly the
same format with `--from-jsonl`, or the corpus of a data pack ($NANOCHAT_DATA_PACK) is packed
automatically. In every case the last shard (sorted by name) is the validation split.

    python -m nanochat.dataset -n 8                  # download shards 0..7 (or pack the data pack)
    python -m nanochat.dataset --from-jsonl a.jsonl.gz b.jsonl.gz
"""

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import sys

from nanochat.common import DownloadError, get_base_dir, get_data_pack_dir, host_reachable, stream_download

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # shards 0..1822
ROW_GROUP_SIZE = 1024  # documents per parquet row group
DEFAULT_SHARD_CHARS = 10_000_000  # offline packing target; the reference shards use 250_000_000
PACK_MANIFEST = "pack_manifest.json"
PARQUET_WRITE_OPTIONS = dict(use_dictionary=False, compression="zstd", compression_level=3, write_statistics=False)


class ShardError(RuntimeError):
    """A shard or corpus file that cannot be used; the message names the file and what to do."""


class PackMismatch(ShardError):
    """base_data already holds shards packed from other inputs or settings."""


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
    files = list_parquet_files(data_dir)
    where = data_dir or get_data_dir()
    if len(files) < 2:
        raise FileNotFoundError(
            f"found {len(files)} shard(s) in {where}; need at least 2 (the last one is the validation split). "
            "Run `python -m nanochat.dataset -n 8` to download shards, or pack a local corpus with "
            "`python -m nanochat.dataset --from-jsonl FILE...` (or set NANOCHAT_DATA_PACK).")
    return files[:-1] if split == "train" else files[-1:]


def open_shard(path):
    """Open a shard as a pyarrow ParquetFile, checking that it is readable and has one string `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{path} is not a readable parquet shard ({e}). It is probably truncated or corrupt: "
                         "delete it and download or pack it again (python -m nanochat.dataset).") from None
    schema = pf.schema_arrow
    if schema.names != ["text"] or not (pa.types.is_string(schema.field("text").type)
                                        or pa.types.is_large_string(schema.field("text").type)):
        raise ShardError(f"{path} has schema {schema.names} ({schema.types}); a shard must have exactly one "
                         "string column named 'text'. Re-create it with python -m nanochat.dataset --from-jsonl.")
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """
    Fetch shard `index` unless it is already present (and matches `sha256`, if given). Returns
    True on success, False after the retries are spent. The bytes arrive in `<file>.tmp` and are
    checked before the rename, so a partial or corrupt `.parquet` is never visible.
    """
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
    n = MAX_SHARD + 1 if num_files == -1 else min(num_files, MAX_SHARD + 1)
    digests = load_sha256_manifest(sha256_manifest)
    missing = [i for i in range(n) if not os.path.exists(os.path.join(data_dir, index_to_filename(i)))]
    if missing and not host_reachable(base_url):
        raise DownloadError(offline_hint(data_dir, base_url))  # seconds, not minutes of retries
    print(f"Downloading {n} shards using {num_workers} workers to {data_dir}")
    jobs = [(i, digests.get(index_to_filename(i))) for i in range(n)]
    fetch = functools.partial(_download_job, base_url=base_url, data_dir=data_dir)
    with Pool(processes=max(1, num_workers)) as pool:
        results = list(tqdm(pool.imap_unordered(fetch, jobs), total=n, desc="shards", unit="shard"))
    ok = sum(results)
    print(f"Done! downloaded {ok}/{n} shards to {data_dir}")
    return ok


def _download_job(job, base_url, data_dir):
    index, digest = job
    return download_single_file(index, base_url=base_url, data_dir=data_dir, sha256=digest)


# -----------------------------------------------------------------------------
# Packing local JSONL documents into shards

def iter_jsonl_docs(path):
    """Yield (text, compressed bytes read so far) per line of a `.jsonl` / `.jsonl.gz` file, validating each line."""
    with open(path, "rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        with io.TextIOWrapper(binary, encoding="utf-8") as stream:
            try:
                for lineno, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ShardError(f"{path}:{lineno}: not valid JSON ({e.msg}); "
                                         "each line must be {\"text\": ...}") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise ShardError(f"{path}:{lineno}: expected an object with a string \"text\" field")
                    yield row["text"], raw.tell()
            except (OSError, EOFError, UnicodeDecodeError) as e:
                raise ShardError(f"{path}: cannot read it as {'gzip-compressed ' if path.endswith('.gz') else ''}"
                                 f"UTF-8 JSONL ({e})") from None


class ShardWriter:
    """Writes documents into shard_XXXXX.parquet files: row groups of ROW_GROUP_SIZE docs, each shard
    closed at a row-group boundary once it holds >= shard_chars characters (the reference rule)."""

    def __init__(self, data_dir, shard_chars, first_index=0):
        self.data_dir, self.shard_chars, self.index = data_dir, shard_chars, first_index
        self.writer, self.rows, self.shard_docs, self.shard_chars_now = None, [], 0, 0
        self.split_by_size = True  # turned off for the validation shard, which holds one whole file
        self.written = []  # [{"name", "docs", "chars", "bytes", "sha256"}]

    def add(self, text):
        self.rows.append(text)
        if len(self.rows) == ROW_GROUP_SIZE:
            self._flush_row_group()
            if self.split_by_size and self.shard_chars_now >= self.shard_chars:
                self.close_shard()

    def _flush_row_group(self):
        import pyarrow as pa
        import pyarrow.parquet as pq
        if not self.rows:
            return
        table = pa.table({"text": pa.array(self.rows, type=pa.string())})
        if self.writer is None:
            self.tmp_path = os.path.join(self.data_dir, index_to_filename(self.index) + ".tmp")
            self.writer = pq.ParquetWriter(self.tmp_path, table.schema, **PARQUET_WRITE_OPTIONS)
        self.writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
        self.shard_docs += len(self.rows)
        self.shard_chars_now += sum(len(t) for t in self.rows)
        self.rows = []

    def close_shard(self):
        """Finish the current shard (including a partial last row group); no-op when it is empty."""
        self._flush_row_group()
        if self.writer is None:
            return
        self.writer.close()
        path = os.path.join(self.data_dir, index_to_filename(self.index))
        os.replace(self.tmp_path, path)
        self.written.append(dict(name=os.path.basename(path), docs=self.shard_docs, chars=self.shard_chars_now,
                                 bytes=os.path.getsize(path), sha256=sha256_of(path)))
        self.writer, self.shard_docs, self.shard_chars_now = None, 0, 0
        self.index += 1


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _describe_inputs(paths, shard_chars):
    inputs = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {path} does not exist (or is not a file)")
        inputs.append(dict(name=os.path.basename(path), bytes=os.path.getsize(path), sha256=sha256_of(path)))
    return dict(format=1, row_group_size=ROW_GROUP_SIZE, shard_chars=shard_chars, inputs=inputs)


def _manifest_is_intact(manifest, data_dir):
    shards = manifest.get("shards") or []
    present = [os.path.basename(p) for p in list_parquet_files(data_dir)]
    return present == [s["name"] for s in shards] and all(
        os.path.getsize(os.path.join(data_dir, s["name"])) == s["bytes"] for s in shards)


def _check_existing(data_dir, settings, force):
    """None when packing may go ahead, else the manifest of an identical, intact earlier pack."""
    manifest_path = os.path.join(data_dir, PACK_MANIFEST)
    existing = list_parquet_files(data_dir)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            old = json.load(f)
        same = {k: old.get(k) for k in settings} == settings
        if same and _manifest_is_intact(old, data_dir):
            return old
        if not same and not force:
            raise PackMismatch(f"{data_dir} holds shards packed from different inputs or settings (see {manifest_path}). "
                             "Pass --force to replace them, or use another NANOCHAT_BASE_DIR.")
        if same:
            print(f"shards in {data_dir} no longer match {manifest_path} (missing or changed); packing them again")
    elif existing and not force:
        raise ShardError(f"{data_dir} already holds {len(existing)} shards that were not packed from a corpus "
                         "(e.g. downloaded ones). Pass --force to replace them, or use another NANOCHAT_BASE_DIR.")
    return None


def pack_jsonl(paths, data_dir=None, shard_chars=DEFAULT_SHARD_CHARS, force=False):
    """
    Pack the documents of `paths` into shards: all but the last file become train shards, the last
    file becomes the (single) validation shard. Idempotent: a manifest of the inputs and settings is
    stored next to the shards and a re-run with the same inputs does nothing. Shards are built in a
    staging folder and replace the old ones only once every input has been read without error.
    """
    import shutil
    from tqdm import tqdm
    data_dir = data_dir or get_data_dir()
    paths = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    if len(paths) < 2:
        raise ShardError("--from-jsonl needs at least two files: the last one becomes the validation shard, "
                         "the others the training shards. Split a single corpus first (e.g. with `split -l`).")
    if shard_chars <= 0:
        raise ValueError(f"--shard-chars must be positive, got {shard_chars}")
    settings = _describe_inputs(paths, shard_chars)
    done_before = _check_existing(data_dir, settings, force)
    if done_before is not None:
        print(f"{data_dir} already holds {len(done_before['shards'])} shards packed from these inputs; nothing to do")
        return done_before

    staging = os.path.join(data_dir, ".packing")
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted pack
    os.makedirs(staging)
    writer = ShardWriter(staging, shard_chars)
    bar = tqdm(total=sum(i["bytes"] for i in settings["inputs"]), unit="B", unit_scale=True, desc="packing")
    try:
        for file_idx, path in enumerate(paths):
            if file_idx == len(paths) - 1:
                writer.close_shard()  # the last file starts (and fills) the validation shard
                writer.split_by_size = False
            docs, done = 0, 0
            for text, pos in iter_jsonl_docs(path):
                writer.add(text)
                docs += 1
                bar.update(pos - done)
                done = pos
            if docs == 0:
                raise ShardError(f"corpus file {path} holds no documents")
        writer.close_shard()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    # every input was good: swap the new shards in. The manifest goes first, so a crash during the
    # swap leaves a manifest that no longer matches the folder, and the next run packs again.
    manifest = dict(settings, shards=writer.written)
    _write_json(os.path.join(data_dir, PACK_MANIFEST), manifest)
    for old in list_parquet_files(data_dir):
        os.remove(old)
    for shard in writer.written:
        os.replace(os.path.join(staging, shard["name"]), os.path.join(data_dir, shard["name"]))
    shutil.rmtree(staging, ignore_errors=True)
    total_docs = sum(s["docs"] for s in writer.written)
    print(f"Packed {total_docs} documents into {len(writer.written)} shards in {data_dir} "
          f"(last = validation: {writer.written[-1]['name']})")
    return manifest


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def data_pack_corpus_files():
    """The corpus files of $NANOCHAT_DATA_PACK (corpus/part_*.jsonl[.gz]), or [] without a pack."""
    pack = get_data_pack_dir()
    corpus = os.path.join(pack, "corpus") if pack else None
    if not corpus or not os.path.isdir(corpus):
        return []
    return sorted(os.path.join(corpus, f) for f in os.listdir(corpus)
                  if f.startswith("part_") and (f.endswith(".jsonl") or f.endswith(".jsonl.gz")))


# -----------------------------------------------------------------------------
# CLI

def _pack_data_pack_corpus(data_dir, args):
    """With NANOCHAT_DATA_PACK set, pack its corpus instead of downloading. True when that was done."""
    files = data_pack_corpus_files()
    if not files:
        print(f"NANOCHAT_DATA_PACK={get_data_pack_dir()} has no corpus/part_*.jsonl[.gz]; downloading instead")
        return False
    if list_parquet_files(data_dir) and not os.path.exists(os.path.join(data_dir, PACK_MANIFEST)):
        return False  # downloaded shards are already there: top them up the usual way
    print(f"NANOCHAT_DATA_PACK is set: packing its corpus ({len(files)} files) into shards "
          "instead of downloading (-n is not used for a local corpus)")
    try:
        pack_jsonl(files, data_dir, args.shard_chars, args.force)
    except PackMismatch:
        print(f"{data_dir} already holds shards packed from other inputs; keeping them. To replace them with "
              f"the data pack's corpus: python -m nanochat.dataset --from-jsonl {os.path.dirname(files[0])}/part_* --force")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description="Download FineWeb-Edu pretraining shards, or pack a local corpus into shards")
    parser.add_argument("-n", "--num-files", type=int, default=-1,
                        help="number of shards to download (default: -1 = all 1823)")
    parser.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads (default: 4)")
    parser.add_argument("--from-jsonl", nargs="+", metavar="FILE",
                        help="pack these .jsonl/.jsonl.gz files ({\"text\": ...} per line) instead of downloading; "
                             "the last file becomes the validation shard")
    parser.add_argument("--shard-chars", type=int, default=DEFAULT_SHARD_CHARS,
                        help=f"characters per packed shard (default {DEFAULT_SHARD_CHARS}; the reference uses 250000000)")
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
        if args.base_url is None and get_data_pack_dir() is not None and _pack_data_pack_corpus(data_dir, args):
            return 0
        n = MAX_SHARD + 1 if args.num_files == -1 else min(args.num_files, MAX_SHARD + 1)
        ok = download_shards(args.num_files, args.num_workers, args.base_url, data_dir, args.sha256_manifest)
        if ok < n:
            print(offline_hint(data_dir, args.base_url or get_base_url()), file=sys.stderr)
            return 1
        return 0
    except (ShardError, DownloadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
