"""
Run model-written Python in a separate, limited process and report what happened.

The verdict is never the program's to give. The child runs the program and then only answers
calls to the program's functions with plain data (None, bool, int, float, str, list, tuple, set,
dict); a task's checks (`judge`) run here in the trusted parent on those values. Whatever the
program writes, on any channel it holds, can at most choose the values its functions return.

Layers around the child, outermost first (each used where the host allows it):
1. OS isolation. `bwrap` (bubblewrap), or else `unshare` plus a chroot, shows the program a
   read-only file system holding only the interpreter (its prefixes, /usr, /lib*, /bin, two /etc
   files), a private 64 MiB /tmp as its only writable place, no network, its own PID space. Root
   is dropped to `nobody` first: namespaces alone leave root its power over host files.
2. A pids cgroup caps the number of processes and lets us kill all of them.
3. rlimits: address space (memory), file size, process count, no core dumps.
4. In the child, `reliability_guard` removes destructive functions (os.system, shutil.rmtree, ...):
   not isolation (other modules reach the same system calls), hence the last layer.
The child starts with a minimal environment (no secrets) in a scratch home. The parent enforces
the wall-time limit, caps the output it reads and kills the whole process tree at the end.
NANOCHAT_SANDBOX=bwrap|unshare|none forces a mode (default auto: bwrap, then unshare; when neither
works, root is refused rather than run untrusted code unisolated, unless it asks for none).
"""

import contextlib
import errno
import faulthandler
import functools
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
from typing import Callable, Optional

logger = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 1 << 20                 # stdout/stderr kept per stream, in characters
MAX_RAW_OUTPUT_BYTES = 4 * MAX_OUTPUT_CHARS  # bytes read per stream before the child is killed (UTF-8: <= 4 per char)
MAX_REPLY_BYTES = 16 << 20                 # one reply of plain data from the child
MAX_FILE_BYTES = 64 << 20                  # RLIMIT_FSIZE and the size of the sandbox /tmp
MAX_PROCESSES = 64                         # pids cgroup / RLIMIT_NPROC
JOIN_GRACE_SECONDS = 1.0
NOBODY = 65534                             # the conventional unprivileged uid/gid (nobody/nogroup)
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: Optional[str] = None
    timeout: bool = False
    memory_exceeded: bool = False

    def __repr__(self):  # only the fields that differ from their defaults (empty output included)
        shown = [(name, getattr(self, name)) for name in ("timeout", "memory_exceeded", "error", "stdout", "stderr")]
        fields = [f"success={self.success}"] + [f"{name}={value!r}" for name, value in shown if value]
        return f"ExecutionResult({', '.join(fields)})"


# -----------------------------------------------------------------------------
# In-process helpers (the public surface of the original harness)

class TimeoutException(Exception):
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


class WriteOnlyStringIO(io.StringIO):
    """StringIO that throws an exception when it's read from."""

    def read(self, *args, **kwargs):
        raise IOError
    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):  # type: ignore
    _stream = "stdin"


@contextlib.contextmanager
def capture_io():
    stdout_capture, stderr_capture = io.StringIO(), io.StringIO()
    with (contextlib.redirect_stdout(stdout_capture), contextlib.redirect_stderr(stderr_capture),
          redirect_stdin(WriteOnlyStringIO())):
        yield stdout_capture, stderr_capture


chdir = contextlib.chdir  # the original harness carried its own copy of this


@contextlib.contextmanager
def create_tempdir():
    with tempfile.TemporaryDirectory() as dirname, chdir(dirname):
        yield dirname


def reliability_guard(maximum_memory_bytes: Optional[int] = None):
    """Disable destructive functions and cap memory in the current process. Not a security boundary
    on its own. `maximum_memory_bytes=None` leaves the memory limits alone."""
    if maximum_memory_bytes is not None:
        import resource
        limits = ["RLIMIT_AS", "RLIMIT_DATA"] + (["RLIMIT_STACK"] if platform.uname().system != "Darwin" else [])
        for limit in limits:
            resource.setrlimit(getattr(resource, limit), (maximum_memory_bytes, maximum_memory_bytes))
    faulthandler.disable()
    import builtins
    builtins.exit = builtins.quit = builtins.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None  # type: ignore
    for module in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[module] = None


# -----------------------------------------------------------------------------
# Plain data across the boundary: JSON with tagged containers (JSON alone turns tuples into lists)

_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def _to_plain(value):
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is dict:
        return {"dict": [[_to_plain(k), _to_plain(v)] for k, v in value.items()]}
    for tag, kind in _CONTAINERS.items():
        if type(value) is kind:
            return {tag: [_to_plain(item) for item in value]}
    raise TypeError(f"{type(value).__name__} values cannot cross the sandbox boundary (plain data only)")


def _from_plain(data):
    """Only builtin values come out, whatever the input: no object of the program's making."""
    if isinstance(data, dict):
        [(tag, items)] = data.items()
        if tag == "dict":
            return {_from_plain(k): _from_plain(v) for k, v in items}
        return _CONTAINERS[tag](_from_plain(item) for item in items)
    if isinstance(data, list):
        raise ValueError("untagged list")
    return data


# -----------------------------------------------------------------------------
# The child

def _outcome(step):
    """Run one step of the program; the reply that describes it."""
    try:
        return {"value": step()}
    except BaseException as e:  # the program may raise anything, SystemExit included
        out_of_memory = isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM)
        prefix = "Memory limit exceeded: " if out_of_memory else ""
        return {"error": f"{prefix}{type(e).__name__}: {e}", "memory_exceeded": out_of_memory}
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def _child_main():
    """The sandboxed interpreter: requests arrive on stdin, one JSON line each; replies go to reply_fd."""
    config = json.loads(sys.argv[1])
    requests, reply_fd, write, exit_now = os.fdopen(0, "rb"), config["reply_fd"], os.write, os._exit
    os.chdir(os.environ["HOME"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized file write raises instead of killing us
    reliability_guard(config["maximum_memory_bytes"])
    sys.stdin = WriteOnlyStringIO()
    namespace = {}
    for line in requests:
        request = json.loads(line)
        if "code" in request:
            reply = _outcome(lambda: exec(request["code"], namespace))
        else:
            reply = _outcome(lambda: _to_plain(namespace[request["call"]](*_from_plain(request["args"]))))
        payload = (json.dumps(reply) + "\n").encode()
        while payload:
            payload = payload[write(reply_fd, payload):]
    exit_now(0)


def _child_program():
    """The child runs this file's own source: the sandbox shows it nothing of the repository."""
    with open(__file__, encoding="utf-8") as source:
        return source.read() + "\n_child_main()\n"


# -----------------------------------------------------------------------------
# Isolation

# Runs as (namespace) root in fresh mount, PID, network, IPC and UTS namespaces: builds the
# sandbox root on a tmpfs over $1 and chroots into it. Arguments: root, /tmp size, view paths, --, command.
_CHROOT_SCRIPT = r"""
set -e; umask 022
root=$1 tmp_bytes=$2; shift 2
mount -t tmpfs -o size=1m,mode=755 sandbox "$root"
mkdir "$root/tmp" "$root/proc" "$root/dev"
mount -t tmpfs -o size="$tmp_bytes",mode=1777 sandbox "$root/tmp"
mount -t proc proc "$root/proc"
for dev in null zero full random urandom; do : > "$root/dev/$dev"; mount --bind "/dev/$dev" "$root/dev/$dev"; done
while [ "$1" != -- ]; do
  if [ -d "$1" ]; then mkdir -p "$root$1"; else mkdir -p "$root${1%/*}"; : > "$root$1"; fi
  mount --bind "$1" "$root$1"; mount -o remount,bind,ro "$root$1"
  shift
done
shift
mount -o remount,bind,ro "$root"
exec chroot "$root" "$@"
"""


# The program needs only the standard library: the base interpreter, not a virtual environment's
# (which may live inside the repository and would have to be shown to the program).
INTERPRETER = getattr(sys, "_base_executable", None) or sys.executable


def _view():
    """The host paths the interpreter needs, shown read-only in the sandbox; nothing else of the host is."""
    wanted = {"/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime",
              sys.base_prefix, sys.base_exec_prefix}
    wanted = {path for path in wanted if os.path.exists(path)}
    return sorted(path for path in wanted if not any(path.startswith(other + "/") for other in wanted))


def _drop_privileges(mode):
    """What runs the program unprivileged: namespaces leave root (or a namespace's root) its powers."""
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs", "--"]
    if mode == "unshare":
        return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return []  # unprivileged bwrap already runs the program as the caller, without capabilities


def _isolation_prefix(mode, home):
    """The command line that wraps the interpreter in `mode`; `home` is a scratch directory on the host."""
    if mode == "none":
        return []
    if mode == "unshare":
        user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return [shutil.which("unshare") or "unshare", *user, "--mount", "--net", "--pid", "--ipc", "--uts",
                "--fork", "--kill-child", "--", "sh", "-c", _CHROOT_SCRIPT, "sh", home, str(MAX_FILE_BYTES),
                *_view(), "--", *_drop_privileges(mode)]
    view = _view()
    parents = sorted({"/".join(path.split("/")[:n]) for path in view for n in range(2, path.count("/") + 1)})
    args = [shutil.which("bwrap") or "bwrap", "--size", str(MAX_FILE_BYTES), "--tmpfs", "/tmp",
            "--chmod", "1777", "/tmp"]
    for parent in parents:  # bwrap would create them 0700, closed to nobody
        args += ["--perms", "0755", "--dir", parent]
    for path in view:
        args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc", "--remount-ro", "/",
             "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if os.geteuid() == 0:  # no user namespace for root: setpriv needs these two to become nobody
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return args + ["--", *_drop_privileges(mode)]


def _popen_args(mode, home, program, *argv):
    """How to run the interpreter on `program` in `mode`. The environment is everything the child
    inherits from us: no secrets (API keys, tokens) of the caller's."""
    return dict(args=_isolation_prefix(mode, home) + [INTERPRETER, "-I", "-c", program, *argv], cwd=home,
                env={"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "HOME": home if mode == "none" else "/tmp"})


@functools.cache
def _works(mode, path):
    """Does `mode` start the interpreter here? (probed once per `path`, the $PATH that finds its tools)"""
    with tempfile.TemporaryDirectory(prefix="nanochat-probe-", ignore_cleanup_errors=True) as home:
        try:
            probe = _popen_args(mode, home, "pass")
            done = shutil.which(mode) and subprocess.run(**probe, capture_output=True, timeout=20)
            return bool(done) and done.returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


@functools.cache
def _warn_once(mode):
    if mode == "bwrap":
        return
    who = "as nobody" if os.geteuid() == 0 else "without capabilities"
    if mode == "unshare":
        what = f"the program runs {who} in a read-only chroot holding only the interpreter, without network"
    else:
        what = (f"no OS isolation, only rlimits and the in-process guard: the program runs as uid {os.geteuid()} and "
                "can read and write what that user can, and use the network")
    logger.warning(f"Code sandbox mode {mode!r}: {what}. "
                   "For full isolation install bubblewrap (apt-get install bubblewrap).")


def isolation_mode(requested=None):
    """'bwrap', 'unshare' or 'none': what execute_code will use here (forced by NANOCHAT_SANDBOX or `requested`)."""
    requested = requested or os.environ.get("NANOCHAT_SANDBOX", "auto")
    if requested not in ("auto", "bwrap", "unshare", "none"):
        raise ValueError(f"NANOCHAT_SANDBOX must be auto|bwrap|unshare|none, got {requested!r}")
    candidates = ["bwrap", "unshare"] if requested == "auto" else [requested]
    mode = next((c for c in candidates if c == "none" or _works(c, os.environ.get("PATH"))), None)
    if mode is None and requested != "auto":
        raise RuntimeError(f"NANOCHAT_SANDBOX={requested} but `{requested}` does not work here "
                           "(install the Debian package bubblewrap, or use NANOCHAT_SANDBOX=auto)")
    if mode is None and os.geteuid() == 0:
        raise RuntimeError("No code sandbox works here (neither bubblewrap nor unshare) and this process runs as "
                           "root: refusing to run untrusted code as root without isolation. Install bubblewrap "
                           "(apt-get install bubblewrap), or set NANOCHAT_SANDBOX=none to run it unisolated anyway.")
    mode = mode or "none"
    _warn_once(mode)
    return mode


class _PidsCgroup:
    """A throwaway pids cgroup (v1 or v2) when the host lets us create one; otherwise inert."""

    _counter = 0

    def __init__(self, max_pids):
        self.path = None
        _PidsCgroup._counter += 1
        name = f"nanochat-exec-{os.getpid()}-{_PidsCgroup._counter}"
        for parent in self._candidate_parents():
            path = os.path.join(parent, name)
            try:
                os.mkdir(path)
                with open(os.path.join(path, "pids.max"), "w") as f:
                    f.write(str(max_pids))
                self.path = path
                return
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    @staticmethod
    def _candidate_parents():
        v1 = "/sys/fs/cgroup/pids"
        if os.path.isdir(v1) and os.access(v1, os.W_OK):
            yield v1
        with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
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

class SandboxCallError(Exception):
    """A function of the program raised (or returned something other than plain data) in the sandbox."""


class _SandboxFailed(BaseException):
    """The run is over: timeout, crash, output flood, or a malformed reply. A BaseException, so a
    judge's `except Exception` cannot swallow it (and it is recorded on the sandbox besides)."""

    def __init__(self, error, timeout=False):
        super().__init__(error)
        self.timeout = timeout


class _Sandbox:
    """One sandboxed child: runs the program, then answers calls to its functions with plain data."""

    def __init__(self, mode, timeout, maximum_memory_bytes):
        self.deadline = time.monotonic() + timeout + JOIN_GRACE_SECONDS
        self.home = tempfile.mkdtemp(prefix="nanochat-exec-")
        self.cgroup = _PidsCgroup(MAX_PROCESSES)
        self.failure, self.memory_exceeded = None, False
        reply_r, reply_w = os.pipe()
        config = json.dumps(dict(reply_fd=reply_w, maximum_memory_bytes=maximum_memory_bytes))
        try:
            self.proc = subprocess.Popen(
                **_popen_args(mode, self.home, _child_program(), config), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(reply_w,), start_new_session=True,
                preexec_fn=lambda: _limit_child(self.cgroup, maximum_memory_bytes))
        except OSError:
            os.close(reply_r)
            self.cgroup.kill_all()
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        finally:
            os.close(reply_w)
        self.reply_fd, self.stdin_fd = reply_r, self.proc.stdin.fileno()
        os.set_blocking(self.stdin_fd, False)  # a child that stops reading must not block us past the deadline
        self.received = {fd: bytearray() for fd in (reply_r, self.proc.stdout.fileno(), self.proc.stderr.fileno())}
        self.selector = selectors.DefaultSelector()
        for fd in self.received:
            self.selector.register(fd, selectors.EVENT_READ)

    def __getitem__(self, name):
        """The program's function `name`, called in the sandbox: plain data in, plain data out."""
        def call(*args):
            reply = self.request({"call": name, "args": _to_plain(args)})
            if "error" in reply:
                raise SandboxCallError(f"{name}() raised {reply['error']}")
            return self._decoded(lambda: _from_plain(reply["value"]))
        call.__name__ = name
        return call

    def request(self, message):
        """Send one request and wait for its reply: a dict with "value", or "error" (and "memory_exceeded")."""
        try:
            self.selector.register(self.stdin_fd, selectors.EVENT_WRITE)
            self._pump(lambda: b"\n" in self.received[self.reply_fd], json.dumps(message).encode() + b"\n")
            line, _, rest = self.received[self.reply_fd].partition(b"\n")
            self.received[self.reply_fd] = bytearray(rest)
            reply = self._decoded(lambda: json.loads(line))
            if not isinstance(reply, dict) or not ("value" in reply or isinstance(reply.get("error"), str)):
                raise _SandboxFailed("Malformed reply from the sandbox")
            self.memory_exceeded |= reply.get("memory_exceeded") is True
            return reply
        except _SandboxFailed as failure:
            self.failure = self.failure or failure
            raise
        finally:
            with contextlib.suppress(KeyError):
                self.selector.unregister(self.stdin_fd)

    def finish(self):
        """End the run: the child exits when its requests end; (stdout, stderr) of a clean exit."""
        self.proc.stdin.close()
        self.selector.unregister(self.reply_fd)
        self._pump(lambda: not self.selector.get_map())
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.05, self.deadline - time.monotonic()))
        if self.proc.returncode != 0:
            raise _SandboxFailed(self._crash_report())
        stdout, stderr = (bytes(self.received[stream.fileno()]).decode("utf-8", errors="replace")
                          for stream in (self.proc.stdout, self.proc.stderr))
        if max(len(stdout), len(stderr)) > MAX_OUTPUT_CHARS:
            raise _SandboxFailed(f"Output limit exceeded: more than {MAX_OUTPUT_CHARS} characters")
        return stdout, stderr

    def _pump(self, done, outgoing=b""):
        """Move bytes between us and the child until done(); a timeout, crash or flood ends the run."""
        while not done():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise _SandboxFailed("Execution timed out (process killed)", timeout=True)
            for key, _ in self.selector.select(remaining):
                if key.fd == self.stdin_fd:
                    try:
                        outgoing = outgoing[os.write(key.fd, outgoing):]
                    except BrokenPipeError:
                        outgoing = b""  # the child is gone: the end of its reply channel says how
                    if not outgoing:
                        self.selector.unregister(key.fd)
                    continue
                data = os.read(key.fd, 1 << 16)
                if not data:
                    self.selector.unregister(key.fd)
                    if key.fd == self.reply_fd:
                        raise _SandboxFailed(self._crash_report())
                self.received[key.fd] += data
                limit = MAX_REPLY_BYTES if key.fd == self.reply_fd else MAX_RAW_OUTPUT_BYTES
                if len(self.received[key.fd]) > limit:
                    raise _SandboxFailed(f"Output limit exceeded: more than {limit} bytes")

    def _decoded(self, decode):
        try:
            return decode()
        except Exception:  # the child may send anything
            raise _SandboxFailed("Malformed reply from the sandbox")

    def _crash_report(self):
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.05, min(1.0, self.deadline - time.monotonic())))
        status, names = self.proc.returncode, {s.value: s.name for s in signal.Signals}
        signum = -status if status is not None and status < 0 else (status or 0) - 128  # bwrap: 128 + signal
        how = (f"killed by {names[signum]}" if signum in names else
               f"exit status {status}" if status is not None else "it closed its reply channel")
        stderr = bytes(self.received[self.proc.stderr.fileno()][-2000:]).decode("utf-8", errors="replace").strip()
        return f"Program crashed ({how})" + (f": {stderr[-500:]}" if stderr else "")

    def close(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.cgroup.kill_all()
        self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        self.selector.close()
        os.close(self.reply_fd)
        shutil.rmtree(self.home, ignore_errors=True)


def execute_code(code: str, timeout: float = 5.0, maximum_memory_bytes: Optional[int] = 256 * 1024 * 1024,
                 isolation: Optional[str] = None, judge: Optional[Callable] = None) -> ExecutionResult:
    """
    Execute `code` in a sandboxed child process; never raises for anything the program does.
    `isolation` (auto|bwrap|unshare|none) overrides NANOCHAT_SANDBOX for this call.

    Without `judge`, success means the program ran to its end without raising; the program itself
    reports that, so it is no verdict on untrusted code. With `judge`, the verdict: after the
    program's top level ran, `judge(functions)` runs here, where `functions[name]` calls the
    program's function `name` in the sandbox (plain data in and out, `SandboxCallError` when it
    raises); success means the judge returned, nothing in the sandbox failed, and the child exited.
    """
    mode = isolation_mode(isolation)
    try:
        sandbox = _Sandbox(mode, timeout, maximum_memory_bytes)
    except OSError as e:
        return ExecutionResult(False, "", "", error=f"Could not start the sandbox: {e}")
    try:
        reply = sandbox.request({"code": code})
        if "error" not in reply and judge is not None:
            try:
                judge(sandbox)
            except Exception as e:  # a failed check, whatever its kind
                reply = {"error": f"{type(e).__name__}: {e}"}
            if sandbox.failure is not None:
                raise sandbox.failure
        if "error" in reply:
            return ExecutionResult(False, "", "", error=reply["error"], memory_exceeded=sandbox.memory_exceeded)
        stdout, stderr = sandbox.finish()
        return ExecutionResult(True, stdout, stderr)
    except _SandboxFailed as failure:
        return ExecutionResult(False, "", "", error=str(failure), timeout=failure.timeout,
                               memory_exceeded=sandbox.memory_exceeded)
    finally:
        sandbox.close()
