"""The math grader on a table of answer pairs, boxed extraction and the reward levels.

The false positives come from public bug reports on math-verify (issues 1 and 14): values that
differ below 1e-15, expressions math-verify parses only in part, and trailing letters taken as a
unit.
"""

from __future__ import annotations

import pytest

from agentrl.rollout.grader import (
    answers_equal,
    extract_boxed,
    gsm8k_final_answer,
    normalize_answer,
    score_completion,
)

EQUAL = [
    ("72", "72"),
    ("1,000", "1000"),
    ("1,234,567", "1234567"),
    ("$18", "18"),
    ("\\$18", "18"),
    ("18 dollars", "18"),
    ("18.00", "18"),
    ("42.0", "42"),
    ("42.", "42"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "0.5"),
    ("\\dfrac{3}{4}", "0.75"),
    ("\\tfrac{3}{4}", "3/4"),
    ("\\frac34", "0.75"),
    ("-\\frac{1}{4}", "-0.25"),
    ("-3", "-3.0"),
    ("+5", "5"),
    ("50\\%", "50"),
    ("50%", "50"),
    ("\\text{42 cm}", "42"),
    ("42 \\text{ cm}", "42"),
    ("12 km", "12"),
    ("90^\\circ", "90"),
    ("10 m^2", "10"),
    ("x+1", "1+x"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\left(1,2\\right)", "(1,2)"),
    ("\\pi", "\\pi"),
    ("3\\pi/2", "\\frac{3\\pi}{2}"),
    (".5", "0.5"),
    ("0.333333333", "0.333333333"),
    ("\\boxed{5}".replace("\\boxed{5}", "5"), "5"),
    ("5 \\text{ cm}", "5"),
    ("60 km/h", "60"),
    ("2^{-98}", "\\frac{1}{2^{98}}"),
    ("\\frac{1}{2004!}", "\\frac{1}{2004!}"),
    ("\\frac{e-1}{e}", "1 - \\frac{1}{e}"),
    ("0.1\\pi", "\\frac{\\pi}{10}"),
    ("19, 46, \\text{ and } 82", "19, 46, 82"),
    ("\\{2,1\\}", "\\{1,2\\}"),
]

UNEQUAL = [
    ("3", "4"),
    ("1,001", "1000"),
    ("0.5", "\\frac{1}{3}"),
    ("18", "180"),
    ("-3", "3"),
    ("42.5", "42"),
    ("x+1", "x+2"),
    ("apple", "pear"),
    ("", "5"),
    ("5", ""),
    ("\\sqrt{2}", "2"),
    ("1/3", "0.33"),
    # values that differ below math-verify's float precision
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}"),
    ("\\frac{1}{2006!}", "\\frac{1}{2004!}"),
    ("\\frac{1}{3 \\cdot 2^{2006}}", "\\frac{2^{2005}+1}{3 \\cdot 2^{2006}}"),
    ("(\\frac{1}{2^{98}}, 1)", "(\\frac{1}{2^{99}}, 1)"),
    # math-verify parses only a prefix of these
    ("1 + \\frac{1}{e}", "1 - \\frac{1}{e}"),
    ("1 + \\frac{1}{\\mathrm{e}}", "1 - \\frac{1}{\\mathrm{e}}"),
    ("1, 3, 5, \\ldots, 2n-1", "1, 2, \\ldots, n"),
    ("1:4:9:\\ldots", "1:2:3:\\ldots"),
    # trailing letters that are no unit
    ("2x", "2"),
    ("3pi", "3"),
    ("5e", "5"),
    ("3\\pi", "3"),
    # more of math-verify issue 14
    ("n=1, 2, 3", "n=2, 3, 4"),
    ("D = (0, 1.5)", "D = (0, 1)"),
    ("21, 36, and 82", "19, 46, \\text{ and } 82"),
    ("2021", "\\pm 2021"),
    ("1:00", "12:00"),
]


@pytest.mark.parametrize(("predicted", "gold"), EQUAL)
def test_equal_answers(predicted: str, gold: str) -> None:
    assert answers_equal(predicted, gold)


@pytest.mark.parametrize(("predicted", "gold"), UNEQUAL)
def test_unequal_answers(predicted: str, gold: str) -> None:
    assert not answers_equal(predicted, gold)


def test_table_is_large_enough() -> None:
    assert len(EQUAL) + len(UNEQUAL) >= 40


def test_extract_boxed_takes_last_and_matches_braces() -> None:
    assert extract_boxed("first \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed {  7 }") == "7"
    assert extract_boxed("\\fbox{3}") == "3"
    assert extract_boxed("no answer") is None
    assert extract_boxed("\\boxed{unclosed") is None


def test_gsm8k_final_answer() -> None:
    assert gsm8k_final_answer("She sold 48+24 = <<48+24=72>>72 clips.\n#### 72") == "72"
    assert gsm8k_final_answer("#### 1,200\n") == "1,200"
    assert gsm8k_final_answer("steps\n#### 72\nThe answer is 72 clips.\n") == "72"
    assert gsm8k_final_answer("#### \n72") is None
    assert gsm8k_final_answer("no marker") is None


def test_normalize_answer() -> None:
    assert normalize_answer(" \\$1,000. ") == "1000"
    assert normalize_answer("\\text{5 apples}") == "5apples"


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("The answer is \\boxed{72}.", 1.0),
        ("so \\boxed{72.0} dollars", 1.0),
        ("\\boxed{\\$72}", 1.0),
        ("\\boxed{71}", 0.2),
        ("\\boxed{}", 0.0),
        ("The answer is 72.", 0.0),
    ],
)
def test_score_completion(completion: str, score: float) -> None:
    assert score_completion(completion, "72", format_reward=0.2) == score


@pytest.mark.parametrize(
    ("completion", "gold", "score"),
    [
        ("\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", 0.2),
        ("so \\boxed{1 + \\frac{1}{e}}", "1 - \\frac{1}{e}", 0.2),
        ("\\boxed{2x}", "2", 0.2),
        ("\\boxed{3pi}", "3", 0.2),
        ("\\boxed{5e}", "5", 0.2),
        ("\\boxed{5 \\text{ cm}}", "5", 1.0),
        ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
        ("\\boxed{\\frac{1}{2^{99}}}", "\\frac{1}{2^{99}}", 1.0),
        ("\\boxed{\\frac{e-1}{e}}", "1 - \\frac{1}{e}", 1.0),
    ],
)
def test_score_completion_false_positives(completion: str, gold: str, score: float) -> None:
    assert score_completion(completion, gold, format_reward=0.2) == score
