"""Tool calls in the two common formats: OpenAI ``tool_calls`` and Hermes/Qwen text blocks.

- OpenAI chat completions return ``message.tool_calls = [{"id", "type": "function",
  "function": {"name", "arguments": "<JSON string>"}}]`` (:func:`from_openai`).
- Hermes-style models (Qwen, SmolLM2 prompted so) write ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`` in their text (:func:`parse_tool_calls`); the CPU engine turns
  such blocks into ``tool_calls`` when a request carries ``tools``, as SGLang's ``qwen25`` parser
  does.

Both give :class:`ToolCall` (a name and an argument mapping) and, for calls that cannot be run,
:class:`MalformedToolCall` saying what is wrong, so a caller can answer every call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
"""A Hermes-style block ``<tool_call>...</tool_call>``; an unclosed one runs to the end."""


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id (``call_`` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One well-formed tool call.

    Attributes:
        name: the tool's name as the model wrote it.
        arguments: the arguments (a JSON object).
        id: the call id (the server's, or a fresh one for text blocks).
    """

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry (arguments as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


@dataclass
class MalformedToolCall:
    """A tool call that cannot be run.

    Attributes:
        raw: the text of the call as the model wrote it.
        reason: what is wrong, for the model to read.
        id: the call id (the server's, or a fresh one).
        name: the tool name, when one could be read.
    """

    raw: str
    reason: str
    id: str = field(default_factory=new_call_id)
    name: str = ""


@dataclass
class ParsedToolCalls:
    """The tool calls found in a model's text.

    Attributes:
        content: the text without the well-formed blocks (malformed ones stay in it).
        calls: the well-formed calls, in order.
        malformed: the blocks that are not a call, in order.
        items: calls and malformed blocks together, in the order they appear.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    malformed: list[MalformedToolCall] = field(default_factory=list)
    items: list[ToolCall | MalformedToolCall] = field(default_factory=list)


def _decode(raw: str, call_id: str | None = None) -> ToolCall | MalformedToolCall:
    """One call from the JSON text ``{"name": ..., "arguments": {...}}``."""
    ids = {"id": call_id} if call_id else {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return MalformedToolCall(raw=raw, reason=f"not valid JSON ({exc.msg})", **ids)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        reason = 'expected {"name": ..., "arguments": {...}}'
        return MalformedToolCall(raw=raw, reason=reason, **ids)
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):
        return decode_arguments(data["name"], arguments, raw, call_id)
    if not isinstance(arguments, dict):
        return MalformedToolCall(raw=raw, reason="arguments must be a JSON object",
                                 name=data["name"], **ids)
    return ToolCall(name=data["name"], arguments=arguments, **ids)


def decode_arguments(
    name: str, arguments: str, raw: str, call_id: str | None = None
) -> ToolCall | MalformedToolCall:
    """A call whose arguments are a JSON string (``""`` means no arguments)."""
    ids = {"id": call_id} if call_id else {}
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return MalformedToolCall(raw=raw, reason=f"arguments are not valid JSON ({exc.msg})",
                                 name=name, **ids)
    if not isinstance(value, dict):
        return MalformedToolCall(raw=raw, reason="arguments must be a JSON object", name=name,
                                 **ids)
    return ToolCall(name=name, arguments=value, **ids)


def parse_tool_calls(text: str) -> ParsedToolCalls:
    """Split Hermes-style ``<tool_call>`` blocks off ``text``.

    Args:
        text: the model's reply.

    Returns:
        The text without the well-formed blocks (stripped when any was removed), the calls, and
        the blocks that are not a call (not JSON, no name, arguments not an object, unclosed).
    """
    parsed = ParsedToolCalls(content=text)

    def take(match: re.Match[str]) -> str:
        raw = match.group(1).strip()
        if not match.group(0).endswith("</tool_call>"):
            call: ToolCall | MalformedToolCall = MalformedToolCall(
                raw=raw, reason="no closing </tool_call>")
        else:
            call = _decode(raw)
        parsed.items.append(call)
        if isinstance(call, MalformedToolCall):
            parsed.malformed.append(call)
            return match.group(0)
        parsed.calls.append(call)
        return ""

    content = TOOL_CALL_RE.sub(take, text)
    parsed.content = content.strip() if parsed.calls else content
    return parsed


def from_openai(tool_calls: list[dict[str, Any]]) -> list[ToolCall | MalformedToolCall]:
    """The calls of an OpenAI ``message.tool_calls`` list, in order, keeping their ids.

    Args:
        tool_calls: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``.

    Returns:
        One :class:`ToolCall` or :class:`MalformedToolCall` per entry.
    """
    out: list[ToolCall | MalformedToolCall] = []
    for entry in tool_calls:
        function = entry.get("function") if isinstance(entry, dict) else None
        call_id = str(entry.get("id") or new_call_id()) if isinstance(entry, dict) else None
        raw = json.dumps(entry)
        if not isinstance(function, dict) or not function.get("name"):
            out.append(MalformedToolCall(raw=raw, reason="a tool call without a function name",
                                         **({"id": call_id} if call_id else {})))
            continue
        arguments = function.get("arguments", "")
        if isinstance(arguments, dict):
            out.append(ToolCall(name=str(function["name"]), arguments=arguments,
                                id=call_id or new_call_id()))
        else:
            out.append(decode_arguments(str(function["name"]), str(arguments), raw, call_id))
    return out
