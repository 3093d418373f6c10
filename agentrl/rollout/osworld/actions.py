"""Parsing model outputs into OSWorld ``pyautogui`` actions.

OSWorld's ``pyautogui`` action space asks the model for Python code in a fenced block (executed in
the VM with ``pyautogui`` imported) or for one of three special codes: ``WAIT`` (nothing to do
yet), ``DONE`` (the task is finished) and ``FAIL`` (the task cannot be done). Models answer
loosely, so :func:`parse_action` accepts

- fenced blocks (```` ```python ````, ```` ```py ````, bare ```` ``` ````), several of them joined;
- unfenced code: the lines from the first ``import pyautogui`` / ``pyautogui.`` / ``time.sleep``
  line on;
- the special codes alone, fenced, or as the last word of the answer (``... so the task is DONE``);
- code followed by ``DONE``/``FAIL`` (the code runs, then the episode ends).

Code is checked with :func:`ast.parse`; code that does not parse, or an answer with neither code
nor a special code, is *malformed*: the sampler records it as a failed step with the raw text.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

SpecialCode = Literal["WAIT", "DONE", "FAIL"]
SPECIAL_CODES: tuple[SpecialCode, ...] = ("WAIT", "DONE", "FAIL")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_SPECIAL_ALONE = re.compile(r"^[\s`'\"*(\[]*(WAIT|DONE|FAIL)[\s`'\".!*)\]]*$")
_SPECIAL_LAST = re.compile(r"\b(WAIT|DONE|FAIL)\b[\s`'\".!*)\]]*$")
_CODE_START = re.compile(
    r"^\s*(import pyautogui|from pyautogui|pyautogui\.|import time|time\.sleep)"
)
_CODE_LANGS = {"", "python", "py", "python3", "pyautogui"}


@dataclass(frozen=True)
class ParsedAction:
    """One model output, parsed.

    Attributes:
        raw: the model's text, unchanged.
        code: Python (pyautogui) code to execute in the VM, or None.
        special: ``WAIT``, ``DONE`` or ``FAIL`` when the output carries one (applied after
            ``code`` when both are present), else None.
        error: why the output is malformed, or None when it is usable.
    """

    raw: str
    code: str | None = None
    special: SpecialCode | None = None
    error: str | None = None

    @property
    def malformed(self) -> bool:
        """Whether the output gave no usable action."""
        return self.error is not None

    @property
    def ends_episode(self) -> bool:
        """Whether the episode stops after this action (DONE or FAIL)."""
        return self.special in ("DONE", "FAIL")

    def summary(self) -> str:
        """A short label for logs and step records: the code, the special code, or the error."""
        if self.error:
            return f"MALFORMED: {self.error}"
        parts = [self.code] if self.code else []
        if self.special:
            parts.append(self.special)
        return "\n".join(parts)


def _check_code(code: str) -> str | None:
    """None when ``code`` parses as Python, else the syntax error with its line."""
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return f"code does not parse: {exc.msg} (line {exc.lineno})"
    return None


def _longest_parsing_prefix(lines: list[str]) -> str:
    """The longest run of ``lines`` from the start that parses (drops trailing prose); all of
    them when no prefix parses, so the syntax error is reported."""
    for end in range(len(lines), 0, -1):
        code = "\n".join(lines[:end]).strip()
        if code and _check_code(code) is None:
            return code
    return "\n".join(lines).strip()


def _special_in(text: str) -> SpecialCode | None:
    match = _SPECIAL_ALONE.match(text)
    return match.group(1) if match else None  # type: ignore[return-value]


def parse_action(text: str) -> ParsedAction:
    """Parse one model output into a :class:`ParsedAction` (never raises).

    Args:
        text: the assistant message content.

    Returns:
        The action: code and/or a special code, or an ``error`` saying why it is malformed.
    """
    raw = text
    text = (text or "").strip()
    if not text:
        return ParsedAction(raw=raw, error="empty output")
    special = _special_in(text)
    if special:
        return ParsedAction(raw=raw, special=special)

    blocks = _FENCE.findall(text)
    codes: list[str] = []
    for lang, body in blocks:
        body = body.strip()
        block_special = _special_in(body or lang)
        if block_special:
            special = block_special
            continue
        if lang.lower() in _CODE_LANGS and body:
            codes.append(body)
    if not blocks:
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
        if start is not None:
            code_lines: list[str] = []
            for line in lines[start:]:
                if _special_in(line):
                    special = _special_in(line)
                    break
                code_lines.append(line)
            codes.append(_longest_parsing_prefix(code_lines))
    if special is None:
        tail = text.rsplit("```", 1)[-1] if blocks else text
        last = _SPECIAL_LAST.search(tail)
        if last and (codes or not blocks):
            special = last.group(1)  # type: ignore[assignment]
    code = "\n\n".join(c for c in codes if c) or None
    if code is None:
        if special:
            return ParsedAction(raw=raw, special=special)
        if blocks:
            return ParsedAction(raw=raw, error="no Python code block and no WAIT/DONE/FAIL")
        return ParsedAction(raw=raw, error="no code block and no WAIT/DONE/FAIL in the output")
    error = _check_code(code)
    if error:
        return ParsedAction(raw=raw, error=error)
    return ParsedAction(raw=raw, code=code, special=special)
