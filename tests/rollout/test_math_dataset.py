"""MathDataset on the shared GSM8K file, MATH-style lines, and malformed lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.errors import DatasetError
from agentrl.rollout.math import MathDataset, MathTask
from tests.conftest import SHARED_DATA

GSM8K = SHARED_DATA / "gsm8k" / "train.jsonl"


def test_gsm8k_loads_every_problem_with_final_answers() -> None:
    dataset = MathDataset(GSM8K)
    assert len(dataset) == 7473 and dataset.errors == []
    first = dataset[0]
    assert isinstance(first, MathTask)
    assert first.question.startswith("Natalia sold clips to 48 of her friends")
    assert first.answer == "72" and first.solution.endswith("#### 72")
    assert dataset[1].answer == "10"
    assert all(t.answer and "####" not in t.answer for t in dataset.tasks)


def test_limit() -> None:
    assert len(MathDataset(GSM8K, limit=8)) == 8


def test_math_style_and_plain_lines(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"problem": "What is 1/2 + 1/4?", "solution": "It is $\\boxed{\\frac{3}{4}}$."},
        {"question": "2+2?", "answer": 4},
    ]) + "\n")
    dataset = MathDataset(path)
    assert [t.answer for t in dataset.tasks] == ["\\frac{3}{4}", "4"]


def test_malformed_lines_are_reported_with_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n"
        + "{not json\n"
        + json.dumps({"question": "no answer"}) + "\n"
        + json.dumps({"problem": "p", "solution": "no box"}) + "\n"
        + json.dumps({"question": "3+3?", "answer": "#### 6"}) + "\n"
    )
    dataset = MathDataset(path, skip_bad_lines=True)
    assert [t.answer for t in dataset.tasks] == ["2", "6"]
    assert [(e.line, e.field) for e in dataset.errors] == [
        (2, None), (3, "answer"), (4, "solution")]
    assert f"{path}:2:" in caplog.text
    with pytest.raises(DatasetError, match=rf"{path}:2: not JSON") as info:
        MathDataset(path, skip_bad_lines=False)
    assert info.value.file == str(path) and info.value.line == 2


def test_missing_file() -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        MathDataset("/nonexistent/train.jsonl")
