"""The code sandbox: right answers pass, wrong ones fail, forged verdicts score 0, hostile programs are contained."""

import ast
import os
import tempfile

import pytest

from dev.sandbox_report import ATTACKS, CONTAINED_WITHOUT_ISOLATION, SECRETS, Bait, run_attack
from nanochat.execution import (ExecutionResult, SandboxCallError, WriteOnlyStringIO, capture_io, chdir,
                                create_tempdir, execute_code, isolation_mode, process_cap_available, reliability_guard,
                                time_limit, TimeoutException)


def _available(mode):
    try:
        return isolation_mode(mode) == mode
    except RuntimeError:
        return False


ISOLATED = _available("bwrap")
ISOLATION_MODES = [pytest.param(mode, marks=pytest.mark.skipif(not _available(mode),
                                                               reason=f"{mode} does not work here"))
                   for mode in ("bwrap", "unshare")]
ALL_MODES = ISOLATION_MODES + ["none"]

HUMANEVAL_LIKE = '''
def add(a, b):
    return {body}

def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0

check(add)
'''


def test_result_repr_lists_only_non_defaults():
    assert repr(ExecutionResult(True, "hi\n", "")) == "ExecutionResult(success=True, stdout='hi\\n')"
    assert "timeout=True" in repr(ExecutionResult(False, "", "", error="x", timeout=True))


def test_helpers_in_process():
    with pytest.raises(TimeoutException):
        with time_limit(0.05):
            while True:
                pass
    with pytest.raises(IOError):
        WriteOnlyStringIO().read()
    cwd = os.getcwd()
    with create_tempdir() as d:
        assert os.getcwd() == os.path.realpath(d)
        with capture_io() as (out, _):
            print("captured")
        with chdir(cwd):
            assert os.getcwd() == cwd
    assert os.getcwd() == cwd and out.getvalue() == "captured\n"


def test_reliability_guard_none_does_not_touch_limits():
    """With None the memory limits are left alone (the original crashed on Linux); run it in a child."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def child():
        import resource
        before = resource.getrlimit(resource.RLIMIT_AS)
        reliability_guard(None)
        queue.put((before, resource.getrlimit(resource.RLIMIT_AS), os.system is None))

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(10)
    before, after, system_removed = queue.get(timeout=5)
    assert before == after and system_removed and proc.exitcode == 0


@pytest.mark.parametrize("mode", ALL_MODES)
def test_correct_and_failing_solutions_are_judged(mode):
    assert execute_code(HUMANEVAL_LIKE.format(body="a + b"), isolation=mode).success
    wrong = execute_code(HUMANEVAL_LIKE.format(body="a - b"), isolation=mode)
    assert not wrong.success and wrong.error.startswith("AssertionError")
    out = execute_code("print('hello')", isolation=mode)
    assert out.success and out.stdout == "hello\n"


def test_judge_calls_the_programs_functions_on_plain_data():
    code = ("def pair(a, b):\n    return (a, {b[0]: {a}}, 1 / b[1])\n"
            "def lazy():\n    return (i for i in [])\n")
    seen = []

    def judge(functions):
        seen.append(functions["pair"](2, [3, 4]))
        with pytest.raises(SandboxCallError, match="ZeroDivisionError"):
            functions["pair"](1, [0, 0])
        with pytest.raises(SandboxCallError, match="generator values cannot cross"):
            functions["lazy"]()

    assert execute_code(code, judge=judge).success
    assert seen == [(2, {3: {2}}, 0.25)] and type(seen[0]) is tuple  # tuples stay tuples

    def failing(functions):
        assert functions["pair"](2, [3, 4]) == "anything else"

    result = execute_code(code, judge=failing)
    assert not result.success and result.error.startswith("AssertionError")


FORGERIES = {
    # find the result channel (argv or /proc/self/fd), write a success record there, exit 0
    "success record on every fd": (
        "import os\ndef {entry}(*args):\n    return None\nprint('{{\"success\": true}}')\n"
        "record = b'{{\"success\": true, \"stdout\": \"\", \"stderr\": \"\", \"error\": null, '"
        " b'\"timeout\": false, \"memory_exceeded\": false}}'\n"
        "for fd in os.listdir('/proc/self/fd'):\n    try:\n        os.write(int(fd), record)\n"
        "    except OSError:\n        pass\nos._exit(0)\n"),
    # an answer that claims to equal whatever the test expects
    "object equal to anything": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "def {entry}(*args):\n    return Anything()\n"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
@pytest.mark.parametrize("mode", ALL_MODES)
def test_forged_verdicts_score_zero_on_humaneval(data_pack, monkeypatch, mode, forgery):
    from tasks.humaneval import HumanEval
    monkeypatch.setenv("NANOCHAT_SANDBOX", mode)
    task = HumanEval()
    conversation = task[2]  # remove_vowels: its check compares answers with ==
    assert "== " in conversation["test"]
    assert task.evaluate(conversation, conversation["messages"][-1]["content"])  # the real solution passes
    assert not task.evaluate(conversation, FORGERIES[forgery].format(entry=conversation["entry_point"]))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_the_program_sees_a_minimal_environment(monkeypatch, mode):
    for name in SECRETS:
        monkeypatch.setenv(name, "secret-value")
    result = execute_code("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'])", isolation=mode)
    assert result.success, result
    names, home = result.stdout.splitlines()
    names = set(ast.literal_eval(names))
    assert not set(SECRETS) & names and "secret-value" not in result.stdout
    assert names <= {"PATH", "LANG", "HOME", "PWD", "OMP_NUM_THREADS", "LC_CTYPE"}  # PWD: set by bwrap
    assert home == "/tmp" if mode != "none" else home.startswith(tempfile.gettempdir())  # its own scratch dir


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_crash_is_reported_as_a_crash_not_a_timeout(mode):
    for code, how in (("import os\nos._exit(3)", "exit status 3"), ("import ctypes\nctypes.string_at(0)", "SIGSEGV")):
        crash = execute_code(code, isolation=mode)
        assert not crash.success and not crash.timeout and "crashed" in crash.error and how in crash.error, crash


@pytest.mark.parametrize("mode", ALL_MODES)
def test_output_is_measured_in_characters_of_the_programs_output(mode):
    wide = execute_code("print('é' * 800000)", isolation=mode)  # 1.6 MB of UTF-8, under the 1M-character cap
    assert wide.success and wide.stdout == "é" * 800000 + "\n", wide.error
    flood = execute_code("print('x' * (1 << 20) + 'y')", isolation=mode)
    assert not flood.success and "Output limit exceeded" in flood.error


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_failed_mmap_sets_memory_exceeded(mode):
    mapped = execute_code("import mmap\nmmap.mmap(-1, 10 * 1024 ** 3)", isolation=mode)
    assert not mapped.success and mapped.memory_exceeded, mapped


@pytest.fixture(scope="module")
def bait():
    with Bait() as host:
        yield host


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
@pytest.mark.parametrize("mode", ISOLATION_MODES)
def test_hostile_programs_are_contained_with_isolation(bait, mode, attack):
    if attack.name.startswith("fork bomb") and not process_cap_available():
        pytest.skip("no pids cgroup and running as root: a real fork bomb would not be capped")
    row = run_attack(attack, bait, mode)
    assert row.contained, row


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.name in CONTAINED_WITHOUT_ISOLATION], ids=lambda a: a.name)
def test_the_unisolated_fallback_contains_what_it_can(bait, attack):
    if attack.name.startswith("fork bomb") and not process_cap_available():
        pytest.skip("no pids cgroup and running as root: a real fork bomb would not be capped")
    row = run_attack(attack, bait, "none")
    assert row.contained, row


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")
def test_root_without_any_isolation_is_refused_unless_it_asks_for_none(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    monkeypatch.delenv("NANOCHAT_SANDBOX", raising=False)
    with pytest.raises(RuntimeError, match="refusing to run untrusted code as root.*NANOCHAT_SANDBOX=none"):
        execute_code("print(1)")
    assert execute_code("print(1)", isolation="none").stdout == "1\n"


def test_forced_mode_validation(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SANDBOX", "sometimes")
    with pytest.raises(ValueError, match="auto\\|bwrap\\|unshare\\|none"):
        execute_code("pass")


@pytest.mark.skipif(os.environ.get("NANOCHAT_REQUIRE_ISOLATION") != "1",
                    reason="set NANOCHAT_REQUIRE_ISOLATION=1 where bubblewrap must work (CI does)")
def test_isolation_is_really_available_where_required():
    # guards against the isolated tests skipping silently because the sandbox probe broke
    assert ISOLATED, "bubblewrap is required here but the sandbox probe failed"
