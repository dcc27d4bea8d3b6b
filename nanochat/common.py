"""
Shared utilities: logging, the base directory, rank-aware printing, device detection,
distributed init/teardown, and robust file downloads.
"""

import contextlib
import logging
import os
import re
import shutil
import socket
import time

import torch
import torch.distributed as dist
from filelock import FileLock


class ColoredFormatter(logging.Formatter):
    """Colors the level name; on INFO lines also highlights sizes, percentages and shard numbers."""

    COLORS = {"DEBUG": "\033[36m", "INFO": "\033[32m", "WARNING": "\033[33m", "ERROR": "\033[31m",
              "CRITICAL": "\033[35m"}
    RESET = "\033[0m"
    BOLD = "\033[1m"

    def format(self, record):
        levelname = record.levelname
        if levelname in self.COLORS:
            record.levelname = f"{self.COLORS[levelname]}{self.BOLD}{levelname}{self.RESET}"
        message = super().format(record)
        record.levelname = levelname
        if levelname == "INFO":
            message = re.sub(r"(\d+\.?\d*\s*(?:GB|MB|%|docs))", rf"{self.BOLD}\1{self.RESET}", message)
            message = re.sub(r"(Shard \d+)", rf"{self.COLORS['INFO']}{self.BOLD}\1{self.RESET}", message)
        return message


def setup_default_logging():
    root = logging.getLogger()
    if any(getattr(h, "_nanochat", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._nanochat = True
    handler.setFormatter(ColoredFormatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


setup_default_logging()
logger = logging.getLogger(__name__)


def get_base_dir():
    """$NANOCHAT_BASE_DIR if set and non-empty, else ~/.cache/nanochat (created)."""
    base_dir = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base_dir, exist_ok=True)
    return base_dir


def get_data_pack_dir():
    """The offline data pack named by $NANOCHAT_DATA_PACK, or None. A set-but-missing path is an error."""
    pack = os.environ.get("NANOCHAT_DATA_PACK")
    if not pack:
        return None
    pack = os.path.abspath(os.path.expanduser(pack))
    if not os.path.isdir(pack):
        raise FileNotFoundError(
            f"NANOCHAT_DATA_PACK={pack} does not exist or is not a directory. "
            "Point it at a data pack folder (see docs/data_pack.md) or unset it to download from the internet."
        )
    return pack


def data_pack_path(*parts):
    """Path of a file inside the data pack, or None when no pack is configured."""
    pack = get_data_pack_dir()
    return None if pack is None else os.path.join(pack, *parts)


# -----------------------------------------------------------------------------
# Downloads

class DownloadError(RuntimeError):
    pass


def fsync_dir(directory):
    """Make a rename or unlink in `directory` durable (the entry lives in the directory's inode)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write_fn):
    """write_fn(binary file) into path.tmp, fsync, rename over path, fsync the directory: a reader or a crash
    never sees a torn file, and the tmp file never survives a failure."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def stream_download(url, dest_path, *, max_attempts=5, connect_timeout=10.0, read_timeout=60.0,
                    chunk_size=1 << 20, backoff_base=2.0, progress=False, verify=None):
    """
    Stream `url` into `dest_path` via `<dest_path>.tmp` and an atomic rename, so a partial file
    is never visible under the final name. `verify(tmp_path) -> bool` (e.g. a sha256 check) runs
    before the rename; a failed check counts as a failed attempt. Retries with exponential
    backoff. An unreachable host (DNS failure, refused connection) fails after at most two quick
    attempts instead of hanging.
    """
    import requests  # lazy: keeps `import nanochat.common` light
    from tqdm import tqdm

    tmp_path = dest_path + ".tmp"
    last_error = None
    for attempt in range(1, max_attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length") or 0)
                written = 0
                with open(tmp_path, "wb") as f, tqdm(total=total or None, unit="B", unit_scale=True, leave=False,
                                                     desc=os.path.basename(dest_path), disable=not progress) as bar:
                    for chunk in response.iter_content(chunk_size=chunk_size):
                        if chunk:
                            f.write(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())  # the bytes are on disk before the rename can expose them
                if total and written != total:
                    raise DownloadError(f"truncated download: got {written} of {total} bytes")
            if verify is not None and not verify(tmp_path):
                raise DownloadError("downloaded content failed its check (e.g. sha256 mismatch)")
            os.replace(tmp_path, dest_path)
            fsync_dir(os.path.dirname(os.path.abspath(dest_path)))
            return dest_path
        except Exception as e:  # every failure is retried the same way
            last_error = e
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp_path)
            unreachable = isinstance(e, requests.exceptions.ConnectionError) and _looks_unreachable(e)
            if unreachable and attempt >= 2:
                break
            if attempt < max_attempts:
                wait = backoff_base ** attempt if not unreachable else 0.5
                logger.warning(f"Attempt {attempt}/{max_attempts} for {url} failed: {e}; retrying in {wait:.1f}s")
                time.sleep(wait)
    raise DownloadError(f"could not download {url} -> {dest_path}: {last_error}")


def _looks_unreachable(error):
    text = str(error).lower()
    return any(s in text for s in ("name or service not known", "temporary failure in name resolution",
                                    "nodename nor servname", "connection refused", "network is unreachable",
                                    "no route to host", "failed to resolve", "getaddrinfo failed"))


def download_file_with_lock(url, filename, postprocess_fn=None, local_copy=None, offline_hint=None):
    """
    Fetch `url` to `<base>/<filename>` once, under a file lock so concurrent ranks don't race.
    If `local_copy` (e.g. a file of the data pack) exists it is copied instead of downloading.
    `postprocess_fn(path)` runs under the lock after a fresh fetch.
    """
    file_path = os.path.join(get_base_dir(), filename)
    if os.path.exists(file_path):
        return file_path
    with FileLock(file_path + ".lock"):
        if os.path.exists(file_path):
            return file_path
        if local_copy is not None and os.path.exists(local_copy):
            logger.info(f"Copying {local_copy} -> {file_path}")
            with open(local_copy, "rb") as source:
                atomic_write(file_path, lambda f: shutil.copyfileobj(source, f))
        else:
            logger.info(f"Downloading {url}")
            try:
                stream_download(url, file_path)
            except DownloadError as e:
                hint = offline_hint or (f"Place the file at {file_path} by hand, or set NANOCHAT_DATA_PACK "
                                        "to a data pack that contains it (see docs/data_pack.md).")
                raise DownloadError(f"{e}\n{hint}") from None
        if postprocess_fn is not None:
            postprocess_fn(file_path)
    return file_path


def host_reachable(url, timeout=3.0):
    """Cheap check used to fail fast offline: can we open a TCP connection to the URL's host?"""
    from urllib.parse import urlparse
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


# -----------------------------------------------------------------------------
# Printing and distributed setup

def print0(s="", **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(s, **kwargs)


def print_banner():
    banner = r"""
                                                   __              __
    ____    ____ _   ____   ____     _____  / /_   ____ _  / /_
   / __ \  / __ `/  / __ \ / __ \   / ___/ / __ \ / __ `/ / __/
  / / / / / /_/ /  / / / // /_/ /  / /__  / / / // /_/ / / /_
 /_/ /_/  \__,_/  /_/ /_/ \____/   \___/ /_/ /_/ \__,_/  \__/
"""
    print0(banner)


def is_ddp():
    return int(os.environ.get("RANK", -1)) != -1


def get_dist_info():
    if is_ddp():
        missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k not in os.environ]
        assert not missing, f"distributed run is missing environment variables {missing}; launch with torchrun"
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def sum_across_ranks(values, device):
    """Element-wise sum of a list of numbers over all ranks (the list itself in a single process)."""
    t = torch.tensor(values, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def mean_across_ranks(values, device):
    """Element-wise mean of a list of numbers over all ranks (a sum, since gloo has no AVG)."""
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return [v / world_size for v in sum_across_ranks([float(v) for v in values], device)]


def autodetect_device_type():
    device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    print0(f"Autodetected device type: {device_type}")
    return device_type


def autocast_context(device_type, dtype="bfloat16"):
    """bf16 autocast on CUDA (unless dtype="float32"); plain fp32 on every other device."""
    if device_type == "cuda" and dtype == "bfloat16":
        return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# the oldest NVIDIA driver each CUDA release of torch runs on (CUDA's minor-version compatibility)
MIN_DRIVER_FOR_CUDA = {"13": 580, "12.8": 570, "12.6": 560, "12.4": 550}


def cuda_unavailable_message():
    """Why CUDA may be missing and what to do, for a machine that is meant to have a GPU."""
    build = torch.version.cuda
    if build is None:
        return ("this torch is a CPU-only build: install the CUDA build of the version pinned in pyproject.toml "
                "(bash dev/setup_env.sh gpu), or run with --device_type=cpu")
    key = build.split(".")[0] if build.startswith("13") else ".".join(build.split(".")[:2])
    driver = MIN_DRIVER_FOR_CUDA.get(key)
    need = f"NVIDIA driver {driver} or newer" if driver else "a recent NVIDIA driver"
    return (f"CUDA is not available to this torch, built for CUDA {build}, which needs {need}. Check the driver "
            f"with `nvidia-smi`; on an older driver, install the same torch version built for an older CUDA "
            f"(for example from PyTorch's cu126 wheel index: `uv pip install torch=={torch.__version__.split('+')[0]} "
            f"--index-url <that index>`), or run with --device_type=cpu")


def require_cuda():
    """Stop with cuda_unavailable_message() unless CUDA works (the GPU runbooks call it before any stage)."""
    if not torch.cuda.is_available():
        raise SystemExit(f"nanochat: {cuda_unavailable_message()}")


def compute_init(device_type="cuda"):
    """Seed, pick the device and, under torchrun, join the process group (NCCL on CUDA, gloo on CPU)."""
    assert device_type in ("cuda", "mps", "cpu"), f"unknown device type {device_type!r}"
    if device_type == "cuda":
        require_cuda()
        torch.set_float32_matmul_precision("high")
    if device_type == "mps":
        assert torch.backends.mps.is_available(), "device_type=mps but MPS is not available; use --device_type=cpu"
    torch.manual_seed(42)  # seeds every device, CUDA included

    ddp, rank, local_rank, world_size = get_dist_info()
    device = torch.device("cuda", local_rank) if ddp and device_type == "cuda" else torch.device(device_type)
    if ddp:
        if device_type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        dist.barrier()
    if rank == 0:
        logger.info(f"Distributed world size: {world_size}")
    return ddp, rank, local_rank, world_size, device


def compute_cleanup():
    if is_ddp() and dist.is_initialized():
        dist.destroy_process_group()


class DummyWandb:
    """Stand-in for a wandb run when logging is disabled."""

    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass
