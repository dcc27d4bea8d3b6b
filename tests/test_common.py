"""Base dir, data pack resolution, rank-aware helpers and the locked download."""

import os
import socket
import time

import pytest

from nanochat import common


def test_base_dir_from_env(base_dir):
    assert common.get_base_dir() == base_dir


def test_base_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert common.get_base_dir() == os.path.join(str(tmp_path), ".cache", "nanochat")
    assert os.path.isdir(common.get_base_dir())


def test_data_pack_missing_path_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOCHAT_DATA_PACK", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="NANOCHAT_DATA_PACK"):
        common.get_data_pack_dir()
    monkeypatch.delenv("NANOCHAT_DATA_PACK")
    assert common.get_data_pack_dir() is None and common.data_pack_path("x") is None


def test_download_with_lock_prefers_local_copy(base_dir, tmp_path):
    local = tmp_path / "words.txt"
    local.write_text("apple\nbanana\n")
    calls = []
    path = common.download_file_with_lock("http://127.0.0.1:9/words.txt", "words.txt",
                                          postprocess_fn=calls.append, local_copy=str(local))
    assert open(path).read() == "apple\nbanana\n" and calls == [path]
    # second call: already there, no postprocess, no copy
    fetched = common.download_file_with_lock("http://127.0.0.1:9/words.txt", "words.txt", postprocess_fn=calls.append)
    assert fetched == path
    assert calls == [path]


def test_download_unreachable_fails_fast_with_hint(base_dir):
    t0 = time.time()
    with pytest.raises(common.DownloadError) as info:
        common.download_file_with_lock("http://127.0.0.1:9/bundle.zip", "bundle.zip")  # port 9: nothing listens
    assert time.time() - t0 < 10
    message = str(info.value)
    assert "bundle.zip" in message and "NANOCHAT_DATA_PACK" in message
    assert not os.path.exists(os.path.join(base_dir, "bundle.zip"))
    assert not os.path.exists(os.path.join(base_dir, "bundle.zip.tmp"))


def test_dist_info_single_process(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert common.get_dist_info() == (False, 0, 0, 1)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(AssertionError, match="torchrun"):
        common.get_dist_info()


def test_print0_only_on_rank_zero(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    common.print0("hidden")
    monkeypatch.setenv("RANK", "0")
    common.print0("shown")
    assert capsys.readouterr().out == "shown\n"


def test_compute_init_cpu(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    ddp, rank, local_rank, world_size, device = common.compute_init("cpu")
    assert (ddp, rank, local_rank, world_size, device.type) == (False, 0, 0, 1, "cpu")
    with pytest.raises(AssertionError):
        common.compute_init("tpu")


def test_host_reachable_gives_up_on_a_silent_host():
    from silent_host import silent_host
    with silent_host() as url:
        start = time.time()
        assert common.host_reachable(url, timeout=1.0) is False
        assert time.time() - start < 3
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        assert common.host_reachable(f"http://127.0.0.1:{listening.getsockname()[1]}") is True


def test_asking_for_cuda_without_it_says_what_to_do(tmp_path):
    import subprocess
    import sys

    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "scripts.base_train", "--device_type=cuda", "--depth=2"], cwd=repo,
                            env={**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "CUDA is not available" in result.stderr and "--device_type=cpu" in result.stderr
