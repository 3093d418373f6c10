"""The math answer grader: extract the final ``\\boxed{}`` answer and compare it with the gold one.

Numbers are compared exactly as fractions after normalizing the surface form: thousands commas,
``$`` and ``\\$``, units and ``\\text{...}`` after the number, ``%``, a trailing ``.`` or ``.0``,
``\\frac``/``\\dfrac``/``a/b`` versus decimals (``1/2 == 0.5``). Anything that is not a plain
number (expressions, intervals, matrices) is compared with ``math-verify`` (sympy based).

Scores (:func:`score_completion`): 1.0 for a correct boxed answer, ``format_reward`` for a
well-formed but wrong boxed answer, 0.0 when there is no boxed answer.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from math_verify import parse, verify

logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+(?:\.\d*)?)?")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")
_FRAC_SHORT = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


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
    """The final answer after GSM8K's ``####`` marker, or ``None``."""
    match = _GSM8K_FINAL.search(solution)
    return match.group(1).strip() if match else None


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


def to_number(answer: str) -> Fraction | None:
    """The exact value of a normalized numeric answer (integer, decimal, ``a/b``, ``\\frac{a}{b}``,
    optionally followed by a unit or ``%``), or ``None`` when it is not a plain number."""
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
    if rest and not re.fullmatch(r"%|[a-zA-Z]+(?:\^?\d)?|[a-zA-Z]+/[a-zA-Z]+", rest):
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
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=None)  # type: ignore[arg-type]
        pred_parsed = parse(f"${predicted}$", parsing_timeout=None)  # type: ignore[arg-type]
        return bool(gold_parsed and pred_parsed
                    and verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - an unparsable answer is simply not equal
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
