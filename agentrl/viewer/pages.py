"""View models of the record page: a record's turns, their messages, tool calls and sampled
tokens coloured by behaviour logprob, built from the raw stored documents."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenView:
    """One sampled token.

    Attributes:
        token_id: the vocabulary id.
        logprob: behaviour logprob (nats) of the sampling distribution, ``None`` when not stored.
        trainer_logprob: the trainer's logprob (nats) of the same token, when stored.
        colour: CSS background: red (p = 0) to green (p = 1) of ``exp(logprob)``.
    """

    token_id: int
    logprob: float | None
    trainer_logprob: float | None
    colour: str

    @property
    def title(self) -> str:
        """The tooltip: id, logprob and probability, and the trainer's logprob when stored."""
        parts = [f"id {self.token_id}"]
        if self.logprob is not None:
            parts.append(f"logprob {self.logprob:.4f} (p {math.exp(self.logprob):.3f})")
        if self.trainer_logprob is not None:
            parts.append(f"trainer logprob {self.trainer_logprob:.4f}")
        return " · ".join(parts)


@dataclass(frozen=True)
class MessageView:
    """One chat message: role, text parts, tool calls (name + JSON arguments), tool call id."""

    role: str
    texts: list[str]
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass(frozen=True)
class CallView:
    """One LLM call (DispatchedSamplingTask) as the record page shows it.

    Attributes:
        doc: the stored document.
        earlier_messages: prompt messages already shown with an earlier turn (collapsed).
        new_messages: prompt messages first seen in this call.
        reply: the response's assistant message, ``None`` when there is no response.
        tokens: the sampled tokens.
        prompt_token_count: tokens of the prompt, when the engine returned them.
        tools: names of the tools offered to the model.
    """

    doc: dict[str, Any]
    earlier_messages: list[MessageView]
    new_messages: list[MessageView]
    reply: MessageView | None
    tokens: list[TokenView]
    prompt_token_count: int | None
    tools: list[str]


def logprob_colour(logprob: float | None) -> str:
    """A CSS colour for a token: hue 0 (red, p = 0) to 120 (green, p = 1) of ``p = exp(logprob)``;
    grey when the logprob is unknown."""
    if logprob is None or not math.isfinite(logprob):
        return "hsl(0, 0%, 88%)"
    return f"hsl({120 * min(1.0, math.exp(logprob)):.0f}, 75%, 82%)"


def _text_parts(content: Any) -> list[str]:
    """Text of a message's content: a string, or OpenAI content parts (images named, not shown)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url")
            ref = url if isinstance(url, str) else json.dumps(url)
            texts.append(f"[image {ref[:80]}]")
        else:
            texts.append(json.dumps(part)[:2000])
    return texts


def message_view(message: dict[str, Any]) -> MessageView:
    """A stored OpenAI-format message as a :class:`MessageView`."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        calls.append({
            "id": str(call.get("id", "")),
            "name": str(function.get("name", "")),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        })
    return MessageView(
        role=str(message.get("role", "?")),
        texts=_text_parts(message.get("content")),
        tool_calls=calls,
        tool_call_id=message.get("tool_call_id"),
    )


def _floats(values: Any) -> list[float | None]:
    return [float(v) if isinstance(v, int | float) else None for v in values or []]


def token_views(call: dict[str, Any]) -> list[TokenView]:
    """The sampled tokens of a call with their behaviour (and, when stored, trainer) logprobs."""
    ids = call.get("completion_token_ids") or []
    behaviour = _floats(call.get("logprobs"))
    trainer = _floats(call.get("trainer_logprobs"))
    views = []
    for i, token_id in enumerate(ids):
        lp = behaviour[i] if i < len(behaviour) else None
        views.append(TokenView(int(token_id), lp, trainer[i] if i < len(trainer) else None,
                               logprob_colour(lp)))
    return views


def call_views(calls: list[dict[str, Any]]) -> list[CallView]:
    """The calls of one attempt, in turn order; each shows the prompt messages the previous call
    did not have (a sampler that rewrote its history shows them all)."""
    views, seen = [], 0
    for call in calls:
        request = call.get("request") or {}
        messages = [message_view(m) for m in request.get("messages") or []
                    if isinstance(m, dict)]
        start = seen if seen <= len(messages) else 0
        choices = (call.get("response") or {}).get("choices") or []
        reply = message_view(choices[0].get("message") or {}) if choices else None
        prompt_ids = call.get("prompt_token_ids")
        views.append(CallView(
            doc=call,
            earlier_messages=messages[:start],
            new_messages=messages[start:],
            reply=reply,
            tokens=token_views(call),
            prompt_token_count=len(prompt_ids) if isinstance(prompt_ids, list) else None,
            tools=[str((t.get("function") or {}).get("name", t.get("name", "")))
                   for t in request.get("tools") or [] if isinstance(t, dict)],
        ))
        seen = len(messages) + 1  # the reply is the next call's last history message
    return views


def split_attempts(
    record: dict[str, Any], calls: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the record's own attempt's calls, other attempts' calls). When the record or its calls
    carry no ``attempt``, every call is the record's own."""
    attempt = record.get("attempt")
    if attempt is None or not any("attempt" in c for c in calls):
        return calls, []
    own = [c for c in calls if c.get("attempt") == attempt]
    return own, [c for c in calls if c.get("attempt") != attempt]
