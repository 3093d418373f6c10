"""The math answer grader: extract the final ``\\boxed{}`` answer and compare it with the gold one.

Numbers are compared exactly as fractions after normalizing the surface form: thousands commas,
``$`` and ``\\$``, ``\\text{...}`` wrappers, ``%``, a trailing ``.`` or ``.0``,
``\\frac``/``\\dfrac``/``a/b`` versus decimals (``1/2 == 0.5``), and a unit after the number
only when it is one of :data:`UNITS` (``5 cm`` is 5; ``2x``, ``3pi`` and ``5e`` are not numbers).

Anything that is not a plain number (expressions, intervals, sets, matrices) is parsed with
``math-verify`` (sympy based) and checked for truncation: the text math-verify extracted must parse
on its own with ``latex2sympy`` and keep every digit of the answer, else the answer counts as
unparsable (math-verify reads ``1 - \\frac{1}{\\mathrm{e}}`` as ``1``). Two scalar expressions
are equal only when their difference is exactly zero in sympy, with decimals taken as exact
rationals (math-verify's float comparison drops differences below 1e-15, so
``\\frac{1}{2^{98}}`` would equal ``\\frac{1}{2^{99}}``). Sets, tuples, intervals, relations and
matrices go to math-verify's ``verify`` at :data:`STRUCTURE_PRECISION_DIGITS` digits.

Scores (:func:`score_completion`): 1.0 for a correct boxed answer, ``format_reward`` for a
well-formed but wrong boxed answer, 0.0 when there is no boxed answer.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from fractions import Fraction

import sympy
from latex2sympy2_extended import latex2sympy
from math_verify import parse, verify

logging.getLogger("math_verify").setLevel(logging.ERROR)

UNITS = frozenset(
    "mm cm m km in inch inches ft foot feet yd yard yards mi mile miles "
    "mg g kg lb lbs pound pounds oz ounce ounces ton tons "
    "s sec secs second seconds min mins minute minutes h hr hrs hour hours "
    "day days week weeks month months year years "
    "ml l liter liters litre litres gallon gallons cup cups "
    "dollar dollars cent cents usd mph kph degree degrees percent unit units".split()
)
"""Units allowed after a number (lower case; ``m^2`` and ``km/h`` combine them). Any other
trailing letters make the answer an expression, not a number."""

STRUCTURE_PRECISION_DIGITS = 1000
"""Decimal digits at which ``verify`` compares the numbers inside sets, tuples, intervals,
relations and matrices (its default, 15, equates values that differ below 1e-15)."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+(?:\.\d*)?)?")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")
_FRAC_SHORT = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")
_GSM8K_FINAL = re.compile(r"####[ \t]*([^\n]*)")
_UNIT_SUFFIX = re.compile(r"([a-z]+)(?:\^?\d)?(?:/([a-z]+))?")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched.

    Returns:
        The inner text, or ``None`` when there is no complete boxed answer.
    """
    last = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    last = text[start:pos]
                    break
    return last.strip() if last is not None else None


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer after GSM8K's ``####`` marker, up to the end of its line.

    Returns:
        The answer, or ``None`` when there is no marker or nothing follows it on its line.
    """
    match = _GSM8K_FINAL.search(solution)
    answer = match.group(1).strip() if match else ""
    return answer or None


def normalize_answer(answer: str) -> str:
    """A canonical surface form: no ``$``, spaces, thousands commas, ``\\left``/``\\right``,
    ``\\text{}`` wrappers, trailing ``.``; ``dfrac`` → ``frac``."""
    s = answer.strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\%", "%")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = _TEXT.sub(r"\1", s)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = s.rstrip(".").strip()
    s = re.sub(r"\s+", "", s)
    return s


def _is_unit(suffix: str) -> bool:
    """Whether ``suffix`` (what follows a number) is ``%`` or a unit of :data:`UNITS`."""
    if suffix == "%":
        return True
    match = _UNIT_SUFFIX.fullmatch(suffix.lower())
    return bool(match) and all(u is None or u in UNITS for u in match.groups())


def to_number(answer: str) -> Fraction | None:
    """The exact value of a normalized numeric answer (integer, decimal, ``a/b``, ``\\frac{a}{b}``,
    optionally followed by ``%`` or a unit of :data:`UNITS`), or ``None`` when it is not a plain
    number."""
    s = normalize_answer(answer)
    for pattern in (_FRAC, _FRAC_SHORT):
        match = pattern.match(s)
        if match:
            sign, num, den = match.groups()
            try:
                value = Fraction(num) / Fraction(den)
            except (ValueError, ZeroDivisionError):
                return None
            return -value if sign else value
    match = _NUMBER.match(s)
    if not match:
        return None
    rest = s[match.end():]
    if rest and not _is_unit(rest):
        return None
    try:
        text = match.group(0)
        if "/" in text:
            num, den = text.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_equal(predicted: str, gold: str) -> bool:
    """Whether two final answers are the same value (see the module docstring)."""
    a, b = normalize_answer(predicted), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        return x == y
    if (x is None) != (y is None) and not any(c in a + b for c in "\\^{}()[]"):
        return False
    gold_expr, pred_expr = parse_expression(gold), parse_expression(predicted)
    if gold_expr is None or pred_expr is None:
        return False
    return expressions_equal(gold_expr, pred_expr)


def _truncated(answer: str, extracted: str) -> bool:
    """Whether math-verify's ``extracted`` text lost part of ``answer``: it does not parse on its
    own, or it misses a digit of the answer."""
    try:
        latex2sympy(extracted, normalization_config=None)
    except Exception:  # noqa: BLE001 - latex2sympy raises bare Exception on a malformed prefix
        return True
    return bool(Counter(re.findall(r"\d", answer)) - Counter(re.findall(r"\d", extracted)))


def parse_expression(answer: str) -> sympy.Basic | sympy.MatrixBase | None:
    """The sympy value of a LaTeX answer, parsed with math-verify and checked for truncation.

    Returns:
        The expression, set, interval, relation or matrix; ``None`` when the answer does not
        parse or math-verify parsed only part of it.
    """
    try:
        parsed = parse(f"${answer}$", parsing_timeout=None)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an unparsable answer is simply not comparable
        return None
    if len(parsed) < 2 or not isinstance(parsed[-1], str) or _truncated(answer, parsed[-1]):
        return None
    return parsed[0]


def _exact(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every float replaced by the rational its decimal digits spell."""
    return expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})


def expressions_equal(
    gold: sympy.Basic | sympy.MatrixBase, pred: sympy.Basic | sympy.MatrixBase
) -> bool:
    """Whether two parsed answers are the same value.

    Scalar expressions: their difference, with floats as exact rationals, simplifies to exactly
    zero (or sympy's ``equals`` proves it zero). Anything else: math-verify's ``verify`` at
    :data:`STRUCTURE_PRECISION_DIGITS` digits.
    """
    try:
        if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
            diff = sympy.simplify(_exact(gold) - _exact(pred))
            return bool(diff == 0 or diff.equals(0) is True)
        return bool(verify(gold, pred, numeric_precision=STRUCTURE_PRECISION_DIGITS,
                           timeout_seconds=None))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - sympy gives up on some pairs: then they are not equal
        return False


def score_completion(completion: str, gold: str, format_reward: float) -> float:
    """The reward of a completion against the gold final answer.

    Args:
        completion: the model's text.
        gold: the gold final answer (already extracted).
        format_reward: score of a well-formed but wrong boxed answer.

    Returns:
        1.0 (correct), ``format_reward`` (boxed but wrong) or 0.0 (no boxed answer).
    """
    boxed = extract_boxed(completion)
    if boxed is None or not boxed.strip():
        return 0.0
    return 1.0 if answers_equal(boxed, gold) else format_reward
