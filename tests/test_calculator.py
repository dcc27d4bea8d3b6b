"""The calculator tool: what it evaluates, and that hostile input returns None quickly."""

import threading
import time

import pytest

from nanochat.calculator import CalculatorError, safe_eval, use_calculator
from nanochat.engine import eval_with_timeout
from nanochat.engine import use_calculator as engine_use_calculator


@pytest.mark.parametrize("expr, expected", [
    ("2+3", 5),
    ("12*7", 84),
    ("1,234 + 1", 1235),
    ("(1 + 2) * (3 - 4)", -3),
    ("7 / 2", 3.5),
    ("7 // 2", 3),
    ("-5 + +2", -3),
    ("0.5 * 4", 2.0),
    ("'strawberry'.count('r')", 3),
    ('"banana".count("an")', 2),
    ("'Mississippi'.lower().count('s')", 4),
])
def test_allowed_expressions(expr, expected):
    assert use_calculator(expr) == expected


def test_engine_uses_the_same_calculator():
    assert engine_use_calculator is use_calculator


HOSTILE = [
    "10**10**10",
    "2**100",
    "'a'*10**9",
    "__import__('os')",
    "__import__('os').system('echo pwned')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "(" * 10_000 + "1" + ")" * 10_000,
    "-" * 5000 + "1",
    "9" * 5000 + "*" + "9" * 5000,
    "99999999999999999999*" * 40 + "9",
    "1/0",
    "5//0",
    "open('x').count('a')",
    "'a'.count('a', 0)",
    "'abc'.replace('a', 'b').count('b')",
    "x.count('a')",
    "'a'.count(1)",
    "'a'.__class__",
    "lambda: 1",
    "[1,2,3]",
    "1 if 1 else 2",
    "'" + "a" * 5000 + "'.count('a')",
    "eval('1')",
    "",
    "   ",
    None,
    "1e308*10",
    "3 % 2",
    "1 < 2",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_or_unsupported_input_returns_none_quickly(expr):
    t0 = time.perf_counter()
    assert use_calculator(expr) is None
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("expr", ["2**3", "3 % 2", "1 < 2", "x", "[1]", "'ab'.replace('a', 'b')", "'a'.__len__()"])
def test_the_evaluator_refuses_what_is_off_its_allow_list(expr):
    # the second line of defence: these must fail in safe_eval itself, whatever use_calculator's text filters pass
    with pytest.raises(CalculatorError, match="not allowed|only string methods"):
        safe_eval(expr)


def test_bounds_reject_with_a_reason():
    with pytest.raises(CalculatorError, match="too large"):
        safe_eval("99999999999999999999" + "*99999999999999999999" * 6)
    with pytest.raises(CalculatorError, match="too long"):
        safe_eval("1+" * 600 + "1")
    with pytest.raises(CalculatorError, match="not allowed"):
        safe_eval("().__class__")
    assert eval_with_timeout("__import__('os')") is None


def test_works_from_worker_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(use_calculator("6*7"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert results == [42] * 8
