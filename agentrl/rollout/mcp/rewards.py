"""Final answers and their rewards: exact match, math equality, or an LLM judge's verdict.

- :func:`extract_answer`: the last ``<answer>...</answer>`` (``answer_tag``) or ``\\boxed{...}``
  (``boxed``) of a reply.
- :func:`exact_match`: equal after :func:`normalize_text` (lower case; punctuation, the articles
  a/an/the and extra whitespace removed, as in SQuAD's evaluation) to any reference.
- :func:`math_match`: the same number or expression as any reference
  (:func:`agentrl.rollout.grader.answers_equal`: exact fractions, then math-verify).
- :func:`judge_answer`: asks a judge model :data:`JUDGE_PROMPT` and reads the yes/no verdict with
  :func:`parse_verdict`; a judge that cannot be reached or gives no verdict raises
  :class:`~agentrl.errors.JudgeUnavailableError` (an infrastructure failure, never a 0).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentrl.errors import InferenceError, JudgeUnavailableError
from agentrl.rollout.grader import answers_equal, extract_boxed

logger = logging.getLogger(__name__)

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

JUDGE_PROMPT = """You grade answers to questions. Decide whether the candidate answer means the \
same as one of the reference answers. Ignore differences of wording, formatting, units written \
out or abbreviated, and extra explanation; a candidate that is vaguer than the reference, or \
that adds a contradicting claim, is not correct.

Question: {question}
Reference answers: {references}
Candidate answer: {answer}

Is the candidate answer correct? Reply with one word: yes or no."""
"""The judge's prompt (one user message); ``{question}``, ``{references}`` (joined with `` | ``)
and ``{answer}`` are filled in."""

ChatCall = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]
"""An LLM call: chat messages → the OpenAI-format response."""


def extract_answer(text: str, answer_format: str) -> str | None:
    """The final answer of a reply, or ``None`` when it gives none (or an empty one).

    Args:
        text: the model's reply.
        answer_format: ``answer_tag`` (the last ``<answer>...</answer>``) or ``boxed``.
    """
    if answer_format == "boxed":
        found = extract_boxed(text)
    else:
        matches = _ANSWER_TAG.findall(text)
        found = matches[-1].strip() if matches else None
    return found or None


def normalize_text(text: str) -> str:
    """Lower case without punctuation, articles and extra whitespace (SQuAD normalization)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, references: Sequence[str]) -> bool:
    """Whether ``answer`` equals any reference after :func:`normalize_text`."""
    normalized = normalize_text(answer)
    return bool(normalized) and any(normalized == normalize_text(r) for r in references)


def math_match(answer: str, references: Sequence[str]) -> bool:
    """Whether ``answer`` is the same number or expression as any reference."""
    return any(answers_equal(answer, reference) for reference in references)


def parse_verdict(reply: str) -> bool | None:
    """The judge's verdict: the reply's first word, without punctuation, is yes or no.

    Returns:
        ``True`` (yes), ``False`` (no), or ``None`` when the reply is no verdict.
    """
    words = reply.strip().split()
    first = words[0].strip(string.punctuation + "*").lower() if words else ""
    return {"yes": True, "no": False}.get(first)


async def judge_answer(
    complete: ChatCall,
    *,
    model: str,
    record_id: str,
    question: str,
    references: Sequence[str],
    answer: str,
    max_attempts: int,
) -> bool:
    """Ask the judge whether ``answer`` is right, up to ``max_attempts`` times for a verdict.

    Args:
        complete: the judge call (messages → OpenAI response), e.g. the router with the judge's
            model name.
        model: the judge's model name (for errors).
        record_id: the record judged (for errors).
        question: the task's question.
        references: its reference answers.
        answer: the trajectory's final answer.
        max_attempts: calls made at most.

    Returns:
        The verdict.

    Raises:
        JudgeUnavailableError: the call failed (service down, HTTP error) or no reply held a
            verdict.
    """
    prompt = JUDGE_PROMPT.format(question=question, references=" | ".join(references),
                                 answer=answer)
    messages = [{"role": "user", "content": prompt}]
    reply = ""
    for _ in range(max_attempts):
        try:
            response = await complete(messages)
        except InferenceError as exc:
            raise JudgeUnavailableError(model, record_id, f"{type(exc).__name__}: {exc}") from exc
        reply = str(((response.get("choices") or [{}])[0].get("message") or {}).get("content")
                    or "")
        verdict = parse_verdict(reply)
        if verdict is not None:
            return verdict
        logger.warning("judge %s gave no verdict for record %s: %r", model, record_id, reply)
    raise JudgeUnavailableError(
        model, record_id, f"no yes/no verdict in {max_attempts} replies; last: {reply[:200]!r}"
    )
