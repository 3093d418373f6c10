"""A small MCP server that runs offline: a calculator and a lookup over a local table.

Tools:

- ``calculate(expression)``: arithmetic on numbers with ``+ - * / // % **`` and parentheses,
  evaluated over the expression's syntax tree (never ``eval``); integers stay exact, other
  results are rounded to 6 decimals. ``2 * (3 + 4)`` → ``14``.
- ``lookup(key)``: a fact from ``facts.json`` beside this file (unit conversions and counts,
  ``"minutes in an hour"`` → ``60``); an unknown key is an error naming the closest keys.

Run it over stdio (what ``mcp.json`` beside it does) or streamable HTTP::

    python examples/mcp_tools/server.py                        # stdio
    python examples/mcp_tools/server.py --http --port 8000     # http://127.0.0.1:8000/mcp

Built with FastMCP from the official ``mcp`` SDK (``mcp.server.fastmcp``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import operator
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from mcp.server.fastmcp import FastMCP

FACTS_FILE = Path(__file__).with_name("facts.json")
"""The lookup table: key → number."""

MAX_EXPONENT = 64
"""Largest exponent ``calculate`` accepts (bounds the work of ``**``)."""

MAX_DIGITS = 400
"""Most digits an intermediate integer may have."""

_OPERATORS: dict[type[ast.AST], Callable[..., Fraction]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos,
}

mcp = FastMCP("agentrl-tools", log_level="WARNING")


def _evaluate(node: ast.AST) -> Fraction:
    """The exact value of an arithmetic syntax tree.

    Raises:
        ValueError: anything but numbers and the arithmetic operators, a huge power.
        ZeroDivisionError: division (or modulo) by zero.
    """
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponents must be whole numbers up to {MAX_EXPONENT}")
            right = Fraction(int(right))
        value = Fraction(_OPERATORS[type(node.op)](left, right))
        if len(str(abs(value.numerator))) > MAX_DIGITS:
            raise ValueError("the number is too large")
        return value
    raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def format_number(value: Fraction) -> str:
    """An integer as such; anything else as a decimal rounded to 6 places."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


@mcp.tool()
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. "2 * (3 + 4)" or "17 / 4"."""
    cleaned = expression.replace(",", "").replace("$", "").replace("x", "*").replace("×", "*")
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        return format_number(_evaluate(tree))
    except ZeroDivisionError as exc:
        raise ValueError("division by zero") from exc


def load_facts(path: Path = FACTS_FILE) -> dict[str, float]:
    """The lookup table, keys in lower case."""
    return {k.lower(): v for k, v in json.loads(path.read_text()).items()}


@mcp.tool()
def lookup(key: str) -> str:
    """Look up a fact such as "minutes in an hour" or "cents in a dollar"."""
    facts = load_facts()
    wanted = " ".join(key.lower().split())
    if wanted in facts:
        return str(facts[wanted])
    close = difflib.get_close_matches(wanted, list(facts), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else f"; keys: {', '.join(sorted(facts))}"
    raise ValueError(f"no fact {key!r}{hint}")


def main() -> None:
    """Serve over stdio, or over streamable HTTP with ``--http``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.http:
        mcp.settings.host, mcp.settings.port = args.host, args.port
        mcp.run(transport="streamable-http")
    else:
        mcp.run()


if __name__ == "__main__":
    main()
