"""`MCPTask` and `MCPDataset`: questions with reference answers, from JSON or JSONL.

A line (JSONL) or an item of a top-level list (JSON, or a ``{"data": [...]}`` object) holds:

- the question: ``question``, ``query`` or ``q``;
- the reference answer(s): ``answer``, ``a``, ``expected_answer`` or ``answers`` — a string, a
  number or a list of them; a GSM8K solution (``... #### 42``) gives its final answer;
- optionally ``system_prompt`` (or ``system``) and ``answer_format`` (``answer_tag``/``boxed``).

A malformed line is reported with file and line (JSON items: the item's index) and skipped
(``skip_bad_lines``) or rejected with :class:`~agentrl.errors.DatasetError`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from agentrl.databases import Task, register_new_model
from agentrl.errors import DatasetError
from agentrl.rollout.datasets import TaskDataset
from agentrl.rollout.grader import gsm8k_final_answer

logger = logging.getLogger(__name__)

QUESTION_FIELDS = ("question", "query", "q")
"""Field names a question may have, first match wins."""

ANSWER_FIELDS = ("answer", "a", "expected_answer", "answers")
"""Field names the reference answer(s) may have, first match wins."""

AnswerFormat = Literal["answer_tag", "boxed"]
"""``answer_tag``: ``<answer>...</answer>``; ``boxed``: ``\\boxed{...}``."""


@register_new_model
class MCPTask(Task):
    """A question for a tool-using agent.

    Attributes:
        question: what the user asks.
        answers: the reference answers (any of them is right).
        system_prompt: the task's own system prompt (empty: the sampler's).
        answer_format: how the final answer is written (``None``: the sampler's default).
    """

    question: str
    answers: list[str] = Field(min_length=1)
    system_prompt: str = ""
    answer_format: AnswerFormat | None = None


def _answers(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return []
        text = str(item).strip()
        final = gsm8k_final_answer(text) if "####" in text else None
        out.append(final or text)
    return [a for a in out if a]


def parse_mcp_item(data: Any, file: str, line: int | None, where: str = "") -> MCPTask:
    """One dataset object as an :class:`MCPTask`.

    Args:
        data: the decoded JSON object.
        file: the dataset file (for errors).
        line: its 1-based line (JSONL), or ``None`` for an item of a JSON list.
        where: a prefix for the error reason (``item 3: ``).

    Raises:
        DatasetError: not an object, no question, no reference answer, a bad answer format.
    """
    if not isinstance(data, dict):
        raise DatasetError(file, line, f"{where}expected a JSON object, got {type(data).__name__}")
    key = next((k for k in QUESTION_FIELDS if k in data), "question")
    question = data.get(key)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(file, line, f"{where}missing or empty (also tried query, q)", field=key)
    key = next((k for k in ANSWER_FIELDS if k in data), "answer")
    answers = _answers(data.get(key))
    if not answers:
        raise DatasetError(
            file, line, f"{where}missing, empty or not text (also tried a, expected_answer)",
            field=key,
        )
    answer_format = data.get("answer_format")
    if answer_format not in (None, "answer_tag", "boxed"):
        raise DatasetError(file, line, f"{where}must be answer_tag or boxed",
                           field="answer_format")
    system = data.get("system_prompt", data.get("system", ""))
    return MCPTask(question=question, answers=answers, system_prompt=str(system or ""),
                   answer_format=answer_format)


class MCPDataset(TaskDataset[MCPTask]):
    """A JSON or JSONL file of questions as a :class:`TaskDataset` of :class:`MCPTask`.

    Args:
        path: a ``.jsonl`` file (one object per line) or a ``.json`` file (a list of objects,
            or an object with a ``data`` list).
        skip_bad_lines: skip (and log, with file:line) malformed lines instead of raising.
        limit: read at most this many tasks (0: all).

    Raises:
        DatasetError: the file cannot be read or is not JSON (a ``.json`` file), or a bad line
            when ``skip_bad_lines`` is False.
    """

    def __init__(self, path: str | Path, skip_bad_lines: bool = True, limit: int = 0) -> None:
        self.path = str(path)
        self.tasks: list[MCPTask] = []
        self.errors: list[DatasetError] = []
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DatasetError(self.path, None, f"cannot read: {exc}") from exc
        for line, where, data in self._entries(text):
            try:
                if isinstance(data, DatasetError):
                    raise data
                self.tasks.append(parse_mcp_item(data, self.path, line, where))
            except DatasetError as err:
                if not skip_bad_lines:
                    raise
                logger.warning("skipping %s", err)
                self.errors.append(err)
            if limit and len(self.tasks) >= limit:
                break

    def _entries(self, text: str) -> list[tuple[int | None, str, Any]]:
        """``(line, where, object or DatasetError)`` per entry of the file."""
        if not self.path.endswith(".json"):
            entries: list[tuple[int | None, str, Any]] = []
            for number, raw in enumerate(text.splitlines(), start=1):
                if not raw.strip():
                    continue
                try:
                    entries.append((number, "", json.loads(raw)))
                except json.JSONDecodeError as exc:
                    entries.append((number, "", DatasetError(self.path, number,
                                                             f"not JSON: {exc.msg}")))
            return entries
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(self.path, exc.lineno, f"not JSON: {exc.msg}") from exc
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise DatasetError(self.path, None, 'expected a list of objects or {"data": [...]}')
        return [(None, f"item {i}: ", item) for i, item in enumerate(items)]

