"""Tests for nanochat/dataset.py: packing local corpora, reading shards, and robust downloads."""

import gzip
import hashlib
import http.server
import json
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset, pack_corpus
from nanochat.common import DownloadError


def write_jsonl(path, texts, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


def read_jsonl_texts(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def assert_reference_format(path):
    """One string column `text`, row groups of 1024 docs except possibly the last, zstd, no statistics."""
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.names == ["text"]
    assert pa.types.is_string(pf.schema_arrow.field("text").type)
    md = pf.metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert all(n == 1024 for n in sizes[:-1]) and 0 < sizes[-1] <= 1024, sizes
    for i in range(md.num_row_groups):
        column = md.row_group(i).column(0)
        assert column.compression == "ZSTD"
        assert column.statistics is None
        assert "PLAIN_DICTIONARY" not in column.encodings and "RLE_DICTIONARY" not in column.encodings


def all_docs(data_dir):
    return [d for split in ("train", "val")
            for rg in dataset.parquets_iter_batched(split, data_dir=data_dir) for d in rg]


@pytest.fixture
def small_corpus(tmp_path):
    """Three files of distinct short documents (2500 + 1100 train, 700 val)."""
    counts = [2500, 1100, 700]
    paths, texts = [], []
    for f, n in enumerate(counts):
        docs = [f"file {f} doc {i}: " + "word " * (i % 17) for i in range(n)]
        gz = f == 0  # cover both plain and gzip-compressed input
        paths.append(write_jsonl(tmp_path / (f"part_{f}.jsonl" + (".gz" if gz else "")), docs, gz=gz))
        texts.append(docs)
    return paths, texts


def test_data_dir_follows_base_dir(base_dir):
    assert dataset.DATA_DIR == os.path.join(base_dir, "base_data")
    assert os.path.isdir(dataset.DATA_DIR)
    assert dataset.index_to_filename(7) == "shard_00007.parquet"
    assert dataset.MAX_SHARD == 1822


def test_pack_small_corpus_format_and_coverage(base_dir, small_corpus):
    paths, texts = small_corpus
    manifest = pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    files = dataset.list_parquet_files()
    assert [os.path.basename(f) for f in files] == [s["name"] for s in manifest["shards"]]
    assert len(files) >= 3
    for f in files:
        assert_reference_format(f)
    # the validation shard is exactly the last input file, in order
    val = [d for rg in dataset.parquets_iter_batched("val") for d in rg]
    assert val == texts[-1]
    # train + val yields every source document exactly once, in input order
    assert all_docs(dataset.get_data_dir()) == [t for docs in texts for t in docs]
    # strided reading covers each row group once
    pf_groups = sum(pq.ParquetFile(f).num_row_groups for f in files[:-1])
    seen = (list(dataset.parquets_iter_batched("train", start=0, step=2))
            + list(dataset.parquets_iter_batched("train", start=1, step=2)))
    assert len(seen) == pf_groups


def test_pack_is_idempotent_and_refuses_changed_inputs(base_dir, small_corpus, capsys):
    paths, texts = small_corpus
    pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    files = dataset.list_parquet_files()
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    capsys.readouterr()
    pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    assert "nothing to do" in capsys.readouterr().out
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    # changed input: a clear error, nothing deleted
    write_jsonl(paths[0], texts[0][:10], gz=True)
    with pytest.raises(dataset.ShardError, match="--force"):
        pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    assert dataset.list_parquet_files() == files
    # --force replaces them
    pack_corpus.pack_jsonl(paths, shard_chars=20_000, force=True)
    assert all_docs(dataset.get_data_dir()) == texts[0][:10] + texts[1] + texts[2]
    # a deleted shard is detected and the pack is rebuilt
    os.remove(dataset.list_parquet_files()[0])
    pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    assert all_docs(dataset.get_data_dir()) == texts[0][:10] + texts[1] + texts[2]


def test_pack_refuses_foreign_shards(base_dir, small_corpus):
    paths, _ = small_corpus
    foreign = os.path.join(dataset.get_data_dir(), "shard_00000.parquet")
    pq.write_table(pa.table({"text": ["downloaded"]}), foreign)
    with pytest.raises(dataset.ShardError, match="not packed from a corpus"):
        pack_corpus.pack_jsonl(paths)
    assert os.path.exists(foreign)


@pytest.mark.parametrize("content, message", [
    ("", "holds no documents"),
    ('{"text": "ok"}\nnot json\n', r"bad\.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', r"bad\.jsonl:2: expected an object with a string \"text\""),
])
def test_pack_bad_input_names_file_and_keeps_existing(base_dir, small_corpus, tmp_path, content, message):
    paths, texts = small_corpus
    pack_corpus.pack_jsonl(paths, shard_chars=20_000)
    before = {f: os.stat(f).st_mtime_ns for f in dataset.list_parquet_files()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(dataset.ShardError, match=message):
        pack_corpus.pack_jsonl([paths[0], str(bad)], force=True)
    after = {f: os.stat(f).st_mtime_ns for f in dataset.list_parquet_files()}
    assert after == before  # nothing already written was deleted
    assert not os.path.exists(os.path.join(dataset.get_data_dir(), ".packing"))


def test_pack_missing_file_and_single_file(base_dir, small_corpus, tmp_path):
    paths, _ = small_corpus
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        pack_corpus.pack_jsonl([paths[0], str(tmp_path / "nope.jsonl")])
    with pytest.raises(dataset.ShardError, match="at least two files"):
        pack_corpus.pack_jsonl([paths[0]])
    assert dataset.main(["--from-jsonl", paths[0], str(tmp_path / "nope.jsonl")]) == 1


def test_reading_bad_shards_names_the_file(base_dir, small_corpus):
    data_dir = dataset.get_data_dir()
    wrong = os.path.join(data_dir, "shard_00000.parquet")
    pq.write_table(pa.table({"content": ["a", "b"]}), wrong)
    truncated = os.path.join(data_dir, "shard_00001.parquet")
    pq.write_table(pa.table({"text": ["x" * 1000] * 50}), truncated)
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    with pytest.raises(dataset.ShardError, match="shard_00000.parquet.*'text'"):
        list(dataset.parquets_iter_batched("train"))
    with pytest.raises(dataset.ShardError, match="shard_00001.parquet.*truncated or corrupt"):
        list(dataset.parquets_iter_batched("val"))
    os.remove(wrong)
    os.remove(truncated)
    with pytest.raises(FileNotFoundError, match="--from-jsonl"):
        list(dataset.parquets_iter_batched("train"))


def test_cli_packs_data_pack_corpus(base_dir, tmp_path, monkeypatch, capsys):
    pack = tmp_path / "pack"
    (pack / "corpus").mkdir(parents=True)
    write_jsonl(pack / "corpus" / "part_000.jsonl.gz", [f"train {i}" for i in range(1500)], gz=True)
    write_jsonl(pack / "corpus" / "part_001.jsonl.gz", [f"val {i}" for i in range(30)], gz=True)
    monkeypatch.setenv("NANOCHAT_DATA_PACK", str(pack))
    monkeypatch.setenv("NANOCHAT_SHARD_BASE_URL", "http://127.0.0.1:9")  # must not be used
    assert dataset.main(["-n", "2"]) == 0
    assert "instead of downloading" in capsys.readouterr().out
    assert all_docs(dataset.get_data_dir()) == [f"train {i}" for i in range(1500)] + [f"val {i}" for i in range(30)]
    assert dataset.main(["-n", "2"]) == 0  # idempotent
    assert "nothing to do" in capsys.readouterr().out
    # shards the user packed from other files are kept, with a note on how to replace them
    own = [write_jsonl(tmp_path / "own0.jsonl", ["mine"]), write_jsonl(tmp_path / "own1.jsonl", ["held out"])]
    assert dataset.main(["--from-jsonl", *own, "--force"]) == 0
    assert dataset.main(["-n", "2"]) == 0
    assert "keeping them" in capsys.readouterr().out
    assert all_docs(dataset.get_data_dir()) == ["mine", "held out"]


def test_pack_real_data_pack_subset(base_dir, data_pack):
    corpus = os.path.join(data_pack, "corpus")
    paths = [os.path.join(corpus, "part_007.jsonl.gz"), os.path.join(corpus, "part_008.jsonl.gz")]
    pack_corpus.pack_jsonl(paths, shard_chars=4_000_000)
    files = dataset.list_parquet_files()
    assert len(files) >= 3
    for f in files:
        assert_reference_format(f)
    source = read_jsonl_texts(paths[0]) + read_jsonl_texts(paths[1])
    assert all_docs(dataset.get_data_dir()) == source
    assert len(source) == 1077 + 602


# -----------------------------------------------------------------------------
# downloads against a local HTTP server

class ShardServer:
    """Serves {filename: bytes}; `faults[filename]` is a list of 'drop'/'corrupt' applied to successive requests."""

    def __init__(self, files, watch_dir):
        self.files, self.faults, self.requests, self.visible_during_transfer = files, {}, [], []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                fault = server.faults.get(name, []).pop(0) if server.faults.get(name) else None
                if fault == "corrupt":
                    body = bytes(reversed(body))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                time.sleep(0.05)
                server.visible_during_transfer.append(sorted(os.listdir(watch_dir)))
                if fault == "drop":
                    self.close_connection = True
                    return  # the connection closes with half the promised bytes
                self.wfile.write(body[half:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def shard_bytes(tmp_path):
    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": [f"doc {i} " * 20 for i in range(3000)]}), path)
    return path.read_bytes()


def test_shards_with_extra_columns_are_read_by_their_text_column(base_dir, small_corpus):
    """Public corpora carry id/url/score next to text: the text is read, the rest ignored."""
    data_dir = dataset.get_data_dir()
    rich = {"id": ["a", "b", "c"], "text": ["one", "two", "three"], "url": ["u"] * 3, "score": [0.1, 0.2, 0.3]}
    pq.write_table(pa.table(rich), os.path.join(data_dir, "shard_00000.parquet"))
    pq.write_table(pa.table(rich), os.path.join(data_dir, "shard_00001.parquet"))
    assert list(dataset.parquets_iter_batched("train")) == [["one", "two", "three"]]
    pf = dataset.open_shard(os.path.join(data_dir, "shard_00000.parquet"))
    assert dataset.read_row_group(pf, 0) == ["one", "two", "three"]
    pq.write_table(pa.table({"id": [1], "text": [3]}), os.path.join(data_dir, "shard_00000.parquet"))
    with pytest.raises(dataset.ShardError, match="shard_00000.parquet.*string column named 'text'"):
        list(dataset.parquets_iter_batched("train"))


def test_download_retries_dropped_connection(base_dir, shard_bytes):
    name = dataset.index_to_filename(0)
    with ShardServer({name: shard_bytes}, dataset.get_data_dir()) as server:
        server.faults[name] = ["drop"]
        assert dataset.download_single_file(0, base_url=server.url, backoff_base=0.01)
        assert server.requests == [name, name]
    path = os.path.join(dataset.get_data_dir(), name)
    assert open(path, "rb").read() == shard_bytes
    # while bytes were in flight only temporary files existed
    for listing in server.visible_during_transfer:
        assert not [f for f in listing if f.endswith(".parquet")], listing
        assert any(f.endswith(".tmp") for f in listing), listing


def test_download_is_fsynced_before_the_rename_and_the_directory_after(base_dir, shard_bytes, monkeypatch):
    """A power cut right after the download must not leave an empty or missing shard under its final name."""
    import stat
    name = dataset.index_to_filename(0)
    final = os.path.join(dataset.get_data_dir(), name)
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file", os.path.exists(final)))
        return real_fsync(fd)

    def recording_replace(src, dst):
        events.append(("rename", dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    with ShardServer({name: shard_bytes}, dataset.get_data_dir()) as server:
        assert dataset.download_single_file(0, base_url=server.url, backoff_base=0.01)
    kinds = [e[0] for e in events]
    rename = kinds.index("rename")
    assert ("fsync-file", False) in events[:rename], events  # the tmp file's bytes, before the rename
    assert "fsync-dir" in kinds[rename:], events  # the rename itself


def test_download_sha256_catches_corruption(base_dir, shard_bytes, tmp_path):
    name = dataset.index_to_filename(1)
    digest = hashlib.sha256(shard_bytes).hexdigest()
    manifest = tmp_path / "sha256.txt"
    manifest.write_text(f"{digest}  {name}\n")
    assert dataset.load_sha256_manifest(str(manifest)) == {name: digest}
    path = os.path.join(dataset.get_data_dir(), name)
    with ShardServer({name: shard_bytes}, dataset.get_data_dir()) as server:
        server.faults[name] = ["corrupt"]
        assert dataset.download_single_file(1, base_url=server.url, sha256=digest, backoff_base=0.01)
        assert server.requests == [name, name]
        assert open(path, "rb").read() == shard_bytes
        # a corrupt shard already on disk is deleted and fetched again
        with open(path, "r+b") as f:
            f.truncate(100)
        assert dataset.download_single_file(1, base_url=server.url, sha256=digest, backoff_base=0.01)
        assert server.requests == [name, name, name]
        # an intact one is left alone
        assert dataset.download_single_file(1, base_url=server.url, sha256=digest)
        assert len(server.requests) == 3
    assert open(path, "rb").read() == shard_bytes
    assert dataset.list_parquet_files() == [path]


def test_download_cli_with_manifest(base_dir, shard_bytes, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATA_PACK", raising=False)
    files = {dataset.index_to_filename(i): shard_bytes + bytes([i]) for i in range(3)}
    manifest = tmp_path / "sha.txt"
    manifest.write_text("".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files.items()))
    corrupted = dataset.index_to_filename(1)
    with ShardServer(files, dataset.get_data_dir()) as server:
        server.faults[corrupted] = ["corrupt"]  # the first copy served is wrong: only its digest can tell
        rc = dataset.main(["-n", "3", "-w", "2", "--base-url", server.url, "--sha256-manifest", str(manifest)])
        assert server.requests.count(corrupted) == 2
    assert rc == 0
    assert "downloaded 3/3" in capsys.readouterr().out
    paths = dataset.list_parquet_files()
    assert [open(p, "rb").read() for p in paths] == [files[os.path.basename(p)] for p in paths]
    assert len(paths) == 3


def test_download_unreachable_fails_fast_with_help(base_dir, capsys, monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATA_PACK", raising=False)
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    start = time.time()
    assert dataset.main(["-n", "2", "--base-url", url]) == 1
    err = capsys.readouterr().err
    assert time.time() - start < 10
    assert "--from-jsonl" in err and "NANOCHAT_DATA_PACK" in err and url in err
    # the single-file path also gives up quickly (no minutes of backoff)
    start = time.time()
    with pytest.raises(DownloadError):
        dataset.download_shards(1, 1, base_url=url)
    assert dataset.download_single_file(0, base_url=url) is False
    assert time.time() - start < 10
    assert dataset.list_parquet_files() == []
