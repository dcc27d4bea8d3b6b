"""
The calculator tool the model calls between <|python_start|> and <|python_end|>. It accepts
- pure arithmetic: numbers, + - * / //, unary signs and parentheses (no exponentiation);
- counting in a string literal: 'strawberry'.count('r') (optionally after .lower()/.upper()).

Nothing is handed to Python's eval: a small interpreter walks an allow-list of `ast` node types,
so names, imports and other attributes or calls are not expressible. Every quantity is bounded
(expression length, nesting depth, number size, string length) and the walk checks a deadline,
so evaluation finishes quickly whatever the input, from any thread (no signals involved).
"""

import ast
import math
import operator
import time

MAX_EXPRESSION_CHARS = 1000  # longer tool calls are not arithmetic a chat model needs
MAX_DEPTH = 64  # nesting of the parsed expression
MAX_ABS_VALUE = 10 ** 100  # largest operand or result magnitude
MAX_STRING_CHARS = 1000

ARITHMETIC_CHARS = set("0123456789*+-/.() ")
STRING_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\"()._ ")
# words that never belong in a string-counting expression (kept from the reference's filter)
FORBIDDEN_WORDS = ("__", "import", "exec", "eval", "compile", "open", "file", "input", "raw_input",
                   "globals", "locals", "vars", "dir", "getattr", "setattr", "delattr", "hasattr")

_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}
_UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_STRING_CASE_METHODS = {"lower": str.lower, "upper": str.upper}


class CalculatorError(ValueError):
    """The expression is outside what the calculator evaluates (or exceeds a bound)."""


class _Evaluator:
    def __init__(self, deadline):
        self.deadline = deadline

    def eval(self, node, depth=0):
        if depth > MAX_DEPTH:
            raise CalculatorError("expression nested too deeply")
        if time.monotonic() > self.deadline:
            raise CalculatorError("time limit exceeded")
        if isinstance(node, ast.Constant):
            return _check_value(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return _check_value(_UNARY_OPS[type(node.op)](self._number(node.operand, depth)))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            left, right = self._number(node.left, depth), self._number(node.right, depth)
            return _check_value(_BINARY_OPS[type(node.op)](left, right))
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise CalculatorError(f"{type(node).__name__} is not allowed")

    def _number(self, node, depth):
        value = self.eval(node, depth + 1)
        if not _is_number(value):
            raise CalculatorError("arithmetic works on numbers only")
        return value

    def _string(self, node, depth):
        value = self.eval(node, depth + 1)
        if not isinstance(value, str):
            raise CalculatorError("expected a string")
        return value

    def _call(self, node, depth):
        func = node.func
        if node.keywords or not isinstance(func, ast.Attribute):
            raise CalculatorError("only string methods can be called")
        receiver = self._string(func.value, depth)
        if func.attr in _STRING_CASE_METHODS and not node.args:
            return _check_value(_STRING_CASE_METHODS[func.attr](receiver))
        if func.attr == "count" and len(node.args) == 1:
            return receiver.count(self._string(node.args[0], depth))
        raise CalculatorError(f"method {func.attr!r} is not allowed")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(value):
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise CalculatorError("string too long")
        return value
    if not _is_number(value):
        raise CalculatorError(f"{type(value).__name__} values are not allowed")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite")
    if abs(value) > MAX_ABS_VALUE:
        raise CalculatorError("number too large")
    return value


def safe_eval(expression, max_time=3.0):
    """Evaluate an allowed expression or raise CalculatorError (see the module docstring)."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError("expression too long")
    deadline = time.monotonic() + max_time
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"cannot parse: {e}") from None
    try:
        return _Evaluator(deadline).eval(tree.body, depth=1)  # depth 0 is the ast.Expression wrapper
    except (ArithmeticError, RecursionError, MemoryError, TypeError) as e:
        raise CalculatorError(str(e)) from None


def eval_with_timeout(formula, max_time=3):
    """The value of `formula`, or None when it is not allowed, fails, or runs past `max_time` s."""
    try:
        return safe_eval(formula, max_time=max_time)
    except Exception:  # the tool must never take the engine down
        return None


def use_calculator(expr):
    """Evaluate a tool call the way the model was trained to use it; None when it can't be done."""
    if not isinstance(expr, str):
        return None
    expr = expr.replace(",", "")  # the model writes 1,234 for 1234
    if all(ch in ARITHMETIC_CHARS for ch in expr):
        allowed = "**" not in expr  # exponentiation is the easy way to an enormous number
    else:
        allowed = (all(ch in STRING_CHARS for ch in expr) and ".count(" in expr
                   and not any(word in expr.lower() for word in FORBIDDEN_WORDS))
    return eval_with_timeout(expr) if allowed else None
