"""The math grader on a table of answer pairs, boxed extraction and the reward levels."""

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
