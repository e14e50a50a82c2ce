"""Small tools flowrelay ships so workflows can use tools offline (the examples do).

Registered through the ``flowrelay.tools`` entry point (see pyproject.toml), so every
executor offers them next to any-agent's built-ins and the operator's own modules.
They touch nothing outside the worker: no network, no files, no code evaluation.
Docstrings are Google style with an ``Args:`` section: the model reads them, and smolagents
refuses a tool whose parameters are not described there.
"""

from __future__ import annotations

import ast
import operator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["calculator", "current_time", "word_count"]

#: Longest expression ``calculator`` accepts; arithmetic, not a program.
MAX_EXPRESSION_CHARS = 200

#: Largest exponent ``calculator`` computes (``9**9**9`` would hang the worker).
MAX_EXPONENT = 1000

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (numbers, + - * / // % ** and parentheses).

    Args:
        expression: The arithmetic to compute, e.g. "(2 + 3) * 7".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    return str(_evaluate(ast.parse(expression, mode="eval").body))


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone, as ISO 8601 text.

    Args:
        timezone: An IANA time zone name such as "Europe/Paris" (default "UTC").
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    return datetime.now(UTC).astimezone(zone).isoformat(timespec="seconds")


def word_count(text: str) -> str:
    """Count the words and characters of a text.

    Args:
        text: The text to count.
    """
    return f"{len(text.split())} words, {len(text)} characters"


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent above {MAX_EXPONENT}")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:60]}")
