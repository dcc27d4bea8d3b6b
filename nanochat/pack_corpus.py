"""
Pack a local corpus of JSONL documents into pretraining shards of exactly the downloaded format.

`python -m nanochat.dataset --from-jsonl a.jsonl.gz b.jsonl.gz` (or a data pack's corpus/, packed
automatically) lands here: all files but the last become training shards, the last one the single
validation shard. A manifest of the inputs and settings next to the shards makes a re-run a no-op.
"""

import glob
import gzip
import io
import json
import os

from nanochat.common import atomic_write, get_data_pack_dir
from nanochat import dataset
from nanochat.dataset import ShardError

DEFAULT_SHARD_CHARS = 10_000_000  # offline packing target; the reference shards use 250_000_000
PACK_MANIFEST = "pack_manifest.json"
PARQUET_WRITE_OPTIONS = dict(use_dictionary=False, compression="zstd", compression_level=3, write_statistics=False)


class PackMismatch(ShardError):
    """base_data already holds shards packed from other inputs or settings."""


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

    def _path(self):
        return os.path.join(self.data_dir, dataset.index_to_filename(self.index))

    def add(self, text):
        self.rows.append(text)
        if len(self.rows) == dataset.ROW_GROUP_SIZE:
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
            self.writer = pq.ParquetWriter(self._path() + ".tmp", table.schema, **PARQUET_WRITE_OPTIONS)
        self.writer.write_table(table, row_group_size=dataset.ROW_GROUP_SIZE)
        self.shard_docs += len(self.rows)
        self.shard_chars_now += sum(len(t) for t in self.rows)
        self.rows = []

    def close_shard(self):
        """Finish the current shard (including a partial last row group); no-op when it is empty."""
        self._flush_row_group()
        if self.writer is None:
            return
        self.writer.close()
        path = self._path()
        os.replace(path + ".tmp", path)
        self.written.append(dict(name=os.path.basename(path), docs=self.shard_docs, chars=self.shard_chars_now,
                                 bytes=os.path.getsize(path), sha256=dataset.sha256_of(path)))
        self.writer, self.shard_docs, self.shard_chars_now = None, 0, 0
        self.index += 1


def _describe_inputs(paths, shard_chars):
    inputs = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file {path} does not exist (or is not a file)")
        inputs.append(dict(name=os.path.basename(path), bytes=os.path.getsize(path), sha256=dataset.sha256_of(path)))
    return dict(format=1, row_group_size=dataset.ROW_GROUP_SIZE, shard_chars=shard_chars, inputs=inputs)


def _manifest_is_intact(manifest, data_dir):
    shards = manifest.get("shards") or []
    present = [os.path.basename(p) for p in dataset.list_parquet_files(data_dir)]
    return present == [s["name"] for s in shards] and all(
        os.path.getsize(os.path.join(data_dir, s["name"])) == s["bytes"] for s in shards)


def _check_existing(data_dir, settings, force):
    """None when packing may go ahead, else the manifest of an identical, intact earlier pack."""
    manifest_path = os.path.join(data_dir, PACK_MANIFEST)
    existing = dataset.list_parquet_files(data_dir)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            old = json.load(f)
        same = {k: old.get(k) for k in settings} == settings
        if same and _manifest_is_intact(old, data_dir):
            return old
        if not same and not force:
            raise PackMismatch(f"{data_dir} holds shards packed from different inputs or settings (see "
                               f"{manifest_path}). Pass --force to replace them, or use another NANOCHAT_BASE_DIR.")
        if same:
            print(f"shards in {data_dir} no longer match {manifest_path} (missing or changed); packing them again")
    elif existing and not force:
        raise ShardError(f"{data_dir} already holds {len(existing)} shards that were not packed from a corpus "
                         "(e.g. downloaded ones). Pass --force to replace them, or use another NANOCHAT_BASE_DIR.")
    return None


def pack_jsonl(paths, data_dir=None, shard_chars=DEFAULT_SHARD_CHARS, force=False):
    """Pack the documents of `paths` into shards: all but the last file become train shards, the last one the
    (single) validation shard. Idempotent: a re-run with the inputs and settings of the manifest does nothing.
    Shards are built in a staging folder and replace the old ones only once every input has been read."""
    import shutil
    from tqdm import tqdm
    data_dir = data_dir or dataset.get_data_dir()
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
    try:
        with tqdm(total=sum(i["bytes"] for i in settings["inputs"]), unit="B", unit_scale=True, desc="packing") as bar:
            for file_idx, path in enumerate(paths):
                if file_idx == len(paths) - 1:
                    writer.close_shard()  # the last file starts (and fills) the validation shard
                    writer.split_by_size = False
                read_to = 0  # compressed bytes read up to the last document
                for text, pos in iter_jsonl_docs(path):
                    writer.add(text)
                    bar.update(pos - read_to)
                    read_to = pos
                if read_to == 0:
                    raise ShardError(f"corpus file {path} holds no documents")
            writer.close_shard()
        # every input was good: swap the new shards in. The manifest goes first, so a crash during the
        # swap leaves a manifest that no longer matches the folder, and the next run packs again.
        manifest = dict(settings, shards=writer.written)
        manifest_path = os.path.join(data_dir, PACK_MANIFEST)
        atomic_write(manifest_path, lambda f: f.write(json.dumps(manifest, indent=2).encode("utf-8")))
        for old in dataset.list_parquet_files(data_dir):
            os.remove(old)
        for shard in writer.written:
            os.replace(os.path.join(staging, shard["name"]), os.path.join(data_dir, shard["name"]))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total_docs = sum(s["docs"] for s in writer.written)
    print(f"Packed {total_docs} documents into {len(writer.written)} shards in {data_dir} "
          f"(last = validation: {writer.written[-1]['name']})")
    return manifest


def data_pack_corpus_files():
    """The corpus files of $NANOCHAT_DATA_PACK (corpus/part_*.jsonl[.gz]), or [] without a pack."""
    pack = get_data_pack_dir()
    if not pack:
        return []
    pattern = os.path.join(glob.escape(os.path.join(pack, "corpus")), "part_*")
    return sorted(glob.glob(pattern + ".jsonl") + glob.glob(pattern + ".jsonl.gz"))


def pack_data_pack_corpus(data_dir, shard_chars=DEFAULT_SHARD_CHARS, force=False):
    """With NANOCHAT_DATA_PACK set, pack its corpus instead of downloading. True when that was done."""
    files = data_pack_corpus_files()
    if not files:
        print(f"NANOCHAT_DATA_PACK={get_data_pack_dir()} has no corpus/part_*.jsonl[.gz]; downloading instead")
        return False
    if dataset.list_parquet_files(data_dir) and not os.path.exists(os.path.join(data_dir, PACK_MANIFEST)):
        return False  # downloaded shards are already there: top them up the usual way
    print(f"NANOCHAT_DATA_PACK is set: packing its corpus ({len(files)} files) into shards "
          "instead of downloading (-n is not used for a local corpus)")
    try:
        pack_jsonl(files, data_dir, shard_chars, force)
    except PackMismatch:
        print(f"{data_dir} already holds shards packed from other inputs; keeping them. To replace them with the "
              f"data pack's corpus: python -m nanochat.dataset --from-jsonl {os.path.dirname(files[0])}/part_* --force")
    return True
