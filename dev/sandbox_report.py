"""
Hostile programs against the code sandbox: for each isolation mode, what each program tried, what
happened, and whether it was contained (the host unharmed and the program's goal not reached).

    python -m dev.sandbox_report                  # bwrap, unshare and the unisolated fallback
    python -m dev.sandbox_report --modes=unshare

Each program succeeds only if its attack worked, so "contained" means: it failed, in time, and
the host shows no trace of it (canary intact, no connection accepted, no probe file written).
The tests (tests/test_execution.py) run the same programs.
"""

import argparse
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

from dev.demo import REPO
from nanochat.execution import MAX_FILE_BYTES, execute_code, isolation_mode

SECRETS = ("OPENAI_API_KEY", "HF_TOKEN", "WANDB_API_KEY")
TIMEOUT = 2.0


def _check_add(functions):
    add = functions["add"]
    assert add(2, 3) == 5 and add(-1, 1) == 0 and add(10, 20) == 30


@dataclass
class Attack:
    name: str
    code: str                          # str.format fields: see Bait.fields
    judge: Optional[Callable] = None   # for attacks on the verdict


ATTACKS = [
    Attack("infinite loop", "while True:\n    pass\n"),
    Attack("fork bomb (posix.fork)", "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"),
    Attack("allocate 10 GB", "x = bytearray(10 * 1024 ** 3)\n"),
    Attack("mmap 10 GB", "import mmap\nm = mmap.mmap(-1, 10 * 1024 ** 3)\n"),
    Attack("1 GB to stdout", "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n"),
    Attack("1 GB to fd 1", "import os\nfor _ in range(1024):\n    os.write(1, b'x' * (1 << 20))\n"),
    Attack("forge the verdict: success records on every fd, exit 0",
           "import os\ndef add(a, b):\n    return a - b\nprint('{{\"success\": true}}')\n"
           "record = b'{{\"success\": true, \"error\": null, \"stdout\": \"passed\"}}\\n'\n"
           "for fd in os.listdir('/proc/self/fd'):\n    try:\n        os.write(int(fd), record)\n"
           "    except OSError:\n        pass\nos._exit(0)\n", judge=_check_add),
    Attack("forge the verdict: return an object equal to anything",
           "class Anything:\n    def __eq__(self, other):\n        return True\n"
           "def add(a, b):\n    return Anything()\n", judge=_check_add),
    Attack("read secrets from its environment",
           f"import os\nassert [k for k in {SECRETS!r} if k in os.environ], 'no secret in its environment'\n"),
    Attack("read the parent's environment (/proc/<ppid>/environ)",
           "import os\nassert open(f'/proc/{{os.getppid()}}/environ', 'rb').read()\n"),
    Attack("read /etc/shadow", "print(len(open('/etc/shadow').read()))\n"),
    Attack("see the host's home (a canary in ~, ~/.cache)",
           "import os\nassert os.path.exists({canary_file!r}) or os.path.isdir({home!r} + '/.cache'), 'neither is visible'\n"),
    Attack("list the repository", "import os\nprint(os.listdir({repo!r}))\n"),
    Attack("list /home, /run, /var",
           "import os\nseen = [p for p in ('/home', '/run', '/var') if os.path.isdir(p) and os.listdir(p)]\n"
           "assert seen, 'all three missing or empty'\n"),
    Attack("connect to host unix sockets (~ and /tmp)",
           "import socket\nfor path in ({unix_home!r}, {unix_tmp!r}):\n    try:\n"
           "        socket.socket(socket.AF_UNIX).connect(path)\n        break\n    except OSError:\n        pass\n"
           "else:\n    raise OSError('no socket reachable')\n"),
    Attack("connect to a host abstract unix socket", "import socket\nsocket.socket(socket.AF_UNIX).connect({abstract!r})\n"),
    Attack("connect to 127.0.0.1 over TCP", "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"),
    Attack("delete a host file (posix.unlink)", "import posix\nposix.unlink({canary_file!r})\n"),
    Attack("write /etc, /usr/lib, the repository, the interpreter's prefix",
           "import sys\nwritten = []\nfor d in ('/etc', '/usr/lib', {repo!r}, sys.prefix):\n    try:\n"
           "        open(d + '/' + {probe!r}, 'w').write('x')\n        written.append(d)\n"
           "    except OSError:\n        pass\nassert written, 'every write refused'\n"),
    Attack("leave its pids cgroup",
           "import os\nmoved = []\nfor f in ('/sys/fs/cgroup/pids/cgroup.procs', '/sys/fs/cgroup/cgroup.procs',"
           " '/sys/fs/cgroup/unified/cgroup.procs'):\n    try:\n        open(f, 'w').write(str(os.getpid()))\n"
           "        moved.append(f)\n    except OSError:\n        pass\nassert moved, 'every cgroup.procs write refused'\n"),
    Attack("run as the host's root or with any capability",
           "import os\ncaps = int(open('/proc/self/status').read().split('CapEff:')[1].split()[0], 16)\n"
           "inside, outside, _ = open('/proc/self/uid_map').read().split()[:3]  # uid 0 of a user namespace is not root\n"
           "host_uid = int(outside) + os.geteuid() - int(inside)\nassert host_uid == 0 or caps, f'host uid {{host_uid}}, no capabilities'\n"),
    Attack("fill /tmp, /dev/shm, /dev and its home past the cap",
           "import os, posix\nchunk, over, mib = b'x' * (16 << 20), [], {{}}\n"
           "for place in ('/tmp', '/dev/shm', '/dev', os.environ.get('HOME', '/tmp')):\n"
           "    written, names = 0, []\n    try:\n        while written < {cap} + (32 << 20):\n"
           "            names.append(place + '/nanochat-fill-' + str(len(names)))\n"
           "            with open(names[-1], 'wb') as f:\n                f.write(chunk)\n"
           "            written += len(chunk)\n    except OSError:\n        pass\n    for name in names:\n"
           "        try:\n            posix.unlink(name)\n        except OSError:\n            pass\n"
           "    mib[place] = written >> 20\n    if written > {cap}:\n        over.append(place)\nassert over, f'MiB written: {{mib}}'\n"),
]

# Without OS isolation only these can be stopped (by rlimits, the pids cgroup, the parent's caps,
# the minimal environment and the verdict being decided in the parent).
CONTAINED_WITHOUT_ISOLATION = [attack.name for attack in ATTACKS[:9]]


class Bait:
    """What a hostile program would like to reach on the host: files, sockets, secrets."""

    def __enter__(self):
        self.token = f"nanochat-sandbox-probe-{os.getpid()}"
        self.accepted, self.stop, self.cleanup = [], threading.Event(), contextlib.ExitStack()
        # under the home directory, outside /tmp: an unisolated program sees it there
        canary = self.temp_dir(prefix="nanochat-canary-", dir=os.path.expanduser("~"))
        tmp_dir = self.temp_dir(prefix="nanochat-bait-")
        self.canary_file = Path(canary, "keep.txt")
        self.canary_file.write_text("alive")
        self.fields = dict(canary_file=str(self.canary_file), home=os.path.expanduser("~"), repo=REPO,
                           probe=self.token, cap=MAX_FILE_BYTES, abstract="\0" + self.token,
                           unix_home=os.path.join(canary, "s.sock"), unix_tmp=os.path.join(tmp_dir, "s.sock"))
        self.fields["port"] = self._listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
        for address in (self.fields["unix_home"], self.fields["unix_tmp"], self.fields["abstract"]):
            self._listen(socket.AF_UNIX, address)
        self.cleanup.enter_context(mock.patch.dict(os.environ, {k: "sandbox-canary-secret" for k in SECRETS}))
        self.cleanup.callback(self.stop.set)  # unwound first: the accept loops end before their sockets close
        return self

    def temp_dir(self, **where):
        path = tempfile.mkdtemp(**where)
        self.cleanup.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    def _listen(self, family, address):
        server = self.cleanup.enter_context(socket.socket(family, socket.SOCK_STREAM))
        server.bind(address)
        server.listen(5)
        server.settimeout(0.1)

        def accept_loop():
            while not self.stop.is_set():
                with contextlib.suppress(OSError):
                    self.accepted.append(server.accept()[0])

        threading.Thread(target=accept_loop, daemon=True).start()
        return server

    def harm(self):
        """Traces the last program left on the host (and removes them)."""
        traces = []
        if not self.canary_file.exists():
            traces.append("canary deleted")
            self.canary_file.write_text("alive")
        if self.accepted:
            traces.append(f"{len(self.accepted)} connection(s) accepted")
            self.accepted.clear()
        for directory in ("/etc", "/usr/lib", REPO, sys.prefix):
            probe = os.path.join(directory, self.token)
            if os.path.exists(probe):
                traces.append(f"wrote {probe}")
                os.remove(probe)
        return traces

    def __exit__(self, *exc):
        self.cleanup.close()


Row = namedtuple("Row", "attack happened contained")


def run_attack(attack, bait, mode):
    start = time.monotonic()
    result = execute_code(attack.code.format(**bait.fields), timeout=TIMEOUT, isolation=mode, judge=attack.judge)
    elapsed = time.monotonic() - start
    traces = bait.harm()
    happened = "; ".join(traces) or ("it succeeded" if result.success else (result.error or "failed").splitlines()[-1])
    contained = not result.success and not traces and elapsed < TIMEOUT + 5
    return Row(attack.name, f"{happened[:90]} ({elapsed:.1f}s)", contained)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="bwrap,unshare,none", help="comma-separated isolation modes")
    args = parser.parse_args()
    with Bait() as bait:
        for mode in args.modes.split(","):
            isolation_mode(mode)  # its warning, if any, before the table
            print(f"\n## isolation={mode}\n")
            print(f"| {'what the program tried':<62} | {'what happened':<100} | contained |")
            print(f"|{'-' * 64}|{'-' * 102}|-----------|")
            rows = [run_attack(attack, bait, mode) for attack in ATTACKS]
            for row in rows:
                print(f"| {row.attack:<62} | {row.happened:<100} | {'yes' if row.contained else 'NO':<9} |")
            print(f"\ncontained: {sum(r.contained for r in rows)}/{len(rows)}")
    # the fallback is never chosen silently for root: auto on a host with neither tool
    with tempfile.TemporaryDirectory() as empty, mock.patch.dict(os.environ, PATH=empty):
        auto = f"\nauto, with neither bwrap nor unshare on PATH, as uid {os.geteuid()}:"
        try:
            print(f"{auto} {isolation_mode('auto')}")
        except RuntimeError as refusal:
            print(f"{auto} refused: {refusal}")


if __name__ == "__main__":
    main()
