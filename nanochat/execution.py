"""
Run model-written Python in a separate, limited process and report what happened.

Layers, outermost first (each used where the host allows it):
1. OS isolation: bubblewrap (`bwrap`) gives the program a read-only view of the file system, a
   private tmpfs /tmp as its only writable place, no network, its own PID space, a new session,
   and dies with us. Without bwrap, `unshare` still removes the network and the PID space.
2. A pids cgroup caps the number of processes (a fork bomb stalls instead of filling the host) and
   lets us kill every process the program started, even ones that left our process group.
3. rlimits: address space (memory), file size, process count (for non-root users), no core dumps.
4. Inside the child, `reliability_guard` removes destructive functions (os.system, shutil.rmtree,
   ...). That alone is not isolation (other modules reach the same system calls), which is why it
   is the last layer, not the only one.
The parent enforces the wall-time limit, caps what it reads from the child, and kills the whole
process tree on timeout. Set NANOCHAT_SANDBOX=bwrap|unshare|none to force a mode (default: auto).
"""

import contextlib
import faulthandler
import io
import json
import logging
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 1 << 20          # captured stdout/stderr kept per stream (1 MiB of text)
MAX_RAW_OUTPUT_BYTES = 4 << 20      # raw bytes read from the child's fds before it is killed
MAX_FILE_BYTES = 64 << 20           # RLIMIT_FSIZE and the size of the sandbox tmpfs
MAX_PROCESSES = 64                  # pids cgroup / RLIMIT_NPROC
JOIN_GRACE_SECONDS = 1.0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: Optional[str] = None
    timeout: bool = False
    memory_exceeded: bool = False

    def __repr__(self):
        fields = [f"success={self.success}"]
        if self.timeout:
            fields.append("timeout=True")
        if self.memory_exceeded:
            fields.append("memory_exceeded=True")
        if self.error:
            fields.append(f"error={self.error!r}")
        if self.stdout:
            fields.append(f"stdout={self.stdout!r}")
        if self.stderr:
            fields.append(f"stderr={self.stderr!r}")
        return f"ExecutionResult({', '.join(fields)})"


# -----------------------------------------------------------------------------
# In-child helpers (the public surface of the original harness)

class TimeoutException(Exception):
    pass


class OutputLimitExceeded(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def signal_handler(signum, frame):
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, signal_handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _CappedStringIO(io.StringIO):
    """A StringIO that refuses to grow past `limit` characters (an output flood ends the run)."""

    def __init__(self, limit=MAX_OUTPUT_CHARS):
        super().__init__()
        self.limit = limit

    def write(self, s):
        if self.tell() + len(s) > self.limit:
            raise OutputLimitExceeded(f"output exceeded {self.limit} characters")
        return super().write(s)


class WriteOnlyStringIO(io.StringIO):
    """StringIO that throws an exception when it's read from."""

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):  # type: ignore
    _stream = "stdin"


@contextlib.contextmanager
def capture_io():
    stdout_capture, stderr_capture = _CappedStringIO(), _CappedStringIO()
    stdin_block = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stdout_capture):
        with contextlib.redirect_stderr(stderr_capture):
            with redirect_stdin(stdin_block):
                yield stdout_capture, stderr_capture


@contextlib.contextmanager
def chdir(root):
    if root == ".":
        yield
        return
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)


@contextlib.contextmanager
def create_tempdir():
    with tempfile.TemporaryDirectory() as dirname:
        with chdir(dirname):
            yield dirname


def reliability_guard(maximum_memory_bytes: Optional[int] = None):
    """
    Disable destructive functions and cap memory in the current process. Not a security
    boundary on its own. `maximum_memory_bytes=None` leaves the memory limits alone.
    """
    if maximum_memory_bytes is not None:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (maximum_memory_bytes, maximum_memory_bytes))
        resource.setrlimit(resource.RLIMIT_DATA, (maximum_memory_bytes, maximum_memory_bytes))
        if not platform.uname().system == "Darwin":
            resource.setrlimit(resource.RLIMIT_STACK, (maximum_memory_bytes, maximum_memory_bytes))

    faulthandler.disable()

    import builtins
    builtins.exit = None
    builtins.quit = None

    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None  # type: ignore
    builtins.help = None
    for module in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[module] = None


def _unsafe_execute(code, timeout, maximum_memory_bytes, result_dict):
    """Runs in the child: exec the program in a temp dir under the guard; fill result_dict."""
    with create_tempdir():
        # the guard removes these; the temp dir cleanup needs them back
        rmtree, rmdir, chdir_, unlink = shutil.rmtree, os.rmdir, os.chdir, os.unlink
        reliability_guard(maximum_memory_bytes=maximum_memory_bytes)
        result_dict.update(success=False, stdout="", stderr="", error="Execution did not finish",
                           timeout=False, memory_exceeded=False)
        try:
            with capture_io() as (stdout_capture, stderr_capture):
                with time_limit(timeout):
                    exec(code, {})
            result_dict.update(success=True, error=None, stdout=stdout_capture.getvalue(),
                               stderr=stderr_capture.getvalue())
        except TimeoutException:
            result_dict.update(timeout=True, error="Execution timed out")
        except MemoryError as e:
            result_dict.update(memory_exceeded=True, error=f"Memory limit exceeded: {e}")
        except OutputLimitExceeded as e:
            result_dict.update(error=f"Output limit exceeded: {e}")
        except BaseException as e:  # noqa: BLE001 - the program may raise anything, SystemExit included
            result_dict.update(error=f"{type(e).__name__}: {e}")
        shutil.rmtree, os.rmdir, os.chdir, os.unlink = rmtree, rmdir, chdir_, unlink


def _child_main():
    """Entry point of the sandboxed interpreter: config in argv[1], program on stdin, result on a pipe fd."""
    config = json.loads(sys.argv[1])
    code = sys.stdin.read()
    write, exit_now, result_fd = os.write, os._exit, config["result_fd"]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized file write raises instead of killing us
    result = {}
    _unsafe_execute(code, config["timeout"], config["maximum_memory_bytes"], result)
    payload = json.dumps(result).encode("utf-8")
    while payload:
        payload = payload[write(result_fd, payload):]
    exit_now(0)


# -----------------------------------------------------------------------------
# Isolation probes (cached per process)

_MODE_CACHE = {}
_WARNED = set()


def _paths_under_tmp():
    """The interpreter and this repository, when they live under /tmp: the private tmpfs would hide them."""
    needed = {REPO_ROOT, sys.prefix, sys.exec_prefix, sys.base_prefix,
              os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(p for p in needed if p.startswith("/tmp/"))


def _bwrap_prefix():
    rebinds = [arg for path in _paths_under_tmp() for arg in ("--ro-bind", path, path)]
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--size", str(MAX_FILE_BYTES), "--tmpfs", "/tmp", *rebinds, "--chdir", "/tmp",
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--"]


def _unshare_prefix():
    extra = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *extra, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]


def _probe(prefix):
    try:
        done = subprocess.run(prefix + [sys.executable, "-c", "pass"], capture_output=True, timeout=20)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation_mode(requested=None):
    """'bwrap', 'unshare' or 'none': what execute_code will use here (forced by NANOCHAT_SANDBOX or `requested`)."""
    requested = requested or os.environ.get("NANOCHAT_SANDBOX", "auto")
    if requested not in ("auto", "bwrap", "unshare", "none"):
        raise ValueError(f"NANOCHAT_SANDBOX must be auto|bwrap|unshare|none, got {requested!r}")
    if requested in _MODE_CACHE:
        return _MODE_CACHE[requested]
    candidates = {"auto": ["bwrap", "unshare"], "bwrap": ["bwrap"], "unshare": ["unshare"], "none": []}[requested]
    mode = "none"
    for candidate in candidates:
        prefix = _bwrap_prefix() if candidate == "bwrap" else _unshare_prefix()
        if shutil.which(prefix[0]) and _probe(prefix):
            mode = candidate
            break
    if requested in ("bwrap", "unshare") and mode == "none":
        raise RuntimeError(f"NANOCHAT_SANDBOX={requested} but `{requested}` does not work here "
                           "(install the Debian package bubblewrap, or use NANOCHAT_SANDBOX=auto)")
    if mode != "bwrap" and mode not in _WARNED:
        _WARNED.add(mode)
        what = "network and PID isolation only (no read-only file system)" if mode == "unshare" else \
            "rlimits and the in-process guard only: untrusted code can still reach the file system and network"
        logger.warning(f"Code sandbox mode {mode!r}: {what}. For full isolation install bubblewrap (apt-get install bubblewrap).")
    _MODE_CACHE[requested] = mode
    return mode


class _PidsCgroup:
    """A throwaway pids cgroup (v1 or v2) when the host lets us create one; otherwise inert."""

    _counter = 0

    def __init__(self, max_pids):
        self.path = None
        _PidsCgroup._counter += 1
        name = f"nanochat-exec-{os.getpid()}-{_PidsCgroup._counter}"
        for parent in self._candidate_parents():
            try:
                path = os.path.join(parent, name)
                os.mkdir(path)
                with open(os.path.join(path, "pids.max"), "w") as f:
                    f.write(str(max_pids))
                self.path = path
                return
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))

    @staticmethod
    def _candidate_parents():
        v1 = "/sys/fs/cgroup/pids"
        if os.path.isdir(v1) and os.access(v1, os.W_OK):
            yield v1
        with contextlib.suppress(OSError):
            with open("/proc/self/cgroup") as f:
                for line in f:
                    if line.startswith("0::"):
                        own = os.path.join("/sys/fs/cgroup", line.strip()[3:].lstrip("/"))
                        with open(os.path.join(own, "cgroup.subtree_control")) as sc:
                            if "pids" in sc.read().split() and os.access(own, os.W_OK):
                                yield own

    def join_self(self):
        """Called in the child between fork and exec: move this process into the cgroup."""
        if self.path is not None:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write("0")

    def kill_all(self):
        if self.path is None:
            return
        for _ in range(200):
            try:
                with open(os.path.join(self.path, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def process_cap_available():
    """Is a runaway fork bomb capped here? (a pids cgroup, or RLIMIT_NPROC, which root ignores)"""
    cgroup = _PidsCgroup(MAX_PROCESSES)
    capped = cgroup.path is not None
    cgroup.kill_all()
    return capped or os.geteuid() != 0


def _limit_child(cgroup, maximum_memory_bytes):
    """preexec_fn: rlimits and cgroup membership for the child and everything it starts."""
    import resource
    cgroup.join_self()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    # RLIMIT_NPROC counts all processes of the user, so add our current usage; root ignores it
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES + 512, MAX_PROCESSES + 512))
    if maximum_memory_bytes is not None:
        # headroom for the interpreter start-up; the child tightens it to the exact limit itself
        limit = maximum_memory_bytes + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# -----------------------------------------------------------------------------
# Parent side

def execute_code(code: str, timeout: float = 5.0, maximum_memory_bytes: Optional[int] = 256 * 1024 * 1024,
                 isolation: Optional[str] = None) -> ExecutionResult:
    """
    Execute `code` in a sandboxed child process; never raises for anything the program does.
    `isolation` (auto|bwrap|unshare|none) overrides NANOCHAT_SANDBOX for this call.
    """
    mode = isolation_mode(isolation)
    prefix = {"bwrap": _bwrap_prefix, "unshare": _unshare_prefix, "none": lambda: []}[mode]()
    result_r, result_w = os.pipe()
    config = dict(timeout=timeout, maximum_memory_bytes=maximum_memory_bytes, result_fd=result_w)
    runner = (f"import sys; sys.path.insert(0, {REPO_ROOT!r}); "
              "from nanochat.execution import _child_main; _child_main()")
    argv = prefix + [sys.executable, "-I", "-c", runner, json.dumps(config)]
    cgroup = _PidsCgroup(MAX_PROCESSES)
    cwd = tempfile.mkdtemp(prefix="nanochat-exec-") if mode != "bwrap" else "/"
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(result_w,), start_new_session=True, cwd=cwd,
                                preexec_fn=lambda: _limit_child(cgroup, maximum_memory_bytes))
    except OSError as e:
        os.close(result_r)
        os.close(result_w)
        cgroup.kill_all()
        shutil.rmtree(cwd, ignore_errors=True) if cwd != "/" else None
        return ExecutionResult(False, "", "", error=f"Could not start the sandbox: {e}")
    os.close(result_w)
    try:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(code.encode("utf-8", errors="replace"))
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()
        outcome = _collect(proc, result_r, deadline=time.monotonic() + timeout + JOIN_GRACE_SECONDS)
    finally:
        _kill_tree(proc, cgroup)
        os.close(result_r)
        if cwd != "/":
            shutil.rmtree(cwd, ignore_errors=True)
    return _to_result(*outcome)


def _collect(proc, result_fd, deadline):
    """Read the child's result pipe (and bounded stdout/stderr) until it finishes, floods, or runs out of time."""
    buffers = {result_fd: bytearray(), proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    selector = selectors.DefaultSelector()
    for fd in buffers:
        selector.register(fd, selectors.EVENT_READ)
    status = "ok"
    try:
        while result_fd in {key.fd for key in selector.get_map().values()}:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fd)
                    continue
                buffers[key.fd] += data
            if sum(len(b) for b in buffers.values()) > MAX_RAW_OUTPUT_BYTES:
                status = "flood"
                break
        if status == "ok":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
    finally:
        selector.close()
    stderr_tail = bytes(buffers[proc.stderr.fileno()][-4000:]).decode("utf-8", errors="replace")
    return status, bytes(buffers[result_fd]), stderr_tail


def _kill_tree(proc, cgroup):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    cgroup.kill_all()
    with contextlib.suppress(Exception):
        proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(Exception):
            stream.close()


def _to_result(status, payload, stderr_tail):
    if status == "timeout":
        return ExecutionResult(False, "", "", error="Execution timed out (process killed)", timeout=True)
    if status == "flood":
        return ExecutionResult(False, "", "", error=f"Output limit exceeded: more than {MAX_RAW_OUTPUT_BYTES} bytes")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or "success" not in data:
        detail = f": {stderr_tail.strip()[-500:]}" if stderr_tail.strip() else ""
        return ExecutionResult(False, "", "", error=f"Execution failed (no result returned){detail}", timeout=True)
    return ExecutionResult(success=bool(data["success"]), stdout=str(data.get("stdout", "")),
                           stderr=str(data.get("stderr", "")), error=data.get("error"),
                           timeout=bool(data.get("timeout")), memory_exceeded=bool(data.get("memory_exceeded")))
