"""The CPU engine's chat completions in SGLang 0.5.23's shape: request → rows → response.

The response is what SGLang's ``ChatCompletionResponse(...).model_dump()`` gives (read from
sglang 0.5.23's ``srt/entrypoints/openai/protocol.py`` and ``serving_chat.py``), no field more:

- ``model`` echoes the request's model (``"default"`` when it names none);
- ``choices[i]``: ``index``, ``message`` (``role``, ``content`` — ``""`` rather than ``None`` —,
  ``reasoning_content: null``, and ``tool_calls`` only when there are some), ``logprobs``
  (``{"content": [{token, bytes, logprob, top_logprobs}]}`` with ``logprobs: true``, else
  ``null``), ``finish_reason``, ``matched_stop``, and ``prompt_token_ids`` /
  ``response_token_ids`` only when the request sets ``return_token_ids``
  (``return_prompt_token_ids`` alone gives ``prompt_token_ids``);
- ``usage``: ``prompt_tokens``, ``total_tokens``, ``completion_tokens``,
  ``prompt_tokens_details: null``, ``reasoning_tokens: 0``, ``completion_tokens_details: null``;
- ``metadata``: ``weight_version`` (after the last token) and ``weight_versions``, the
  ``[{version, start, end}]`` spans of the first choice's output tokens.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import torch

from agentrl.inference.engine.runner import GenerationRequest, ModelRunner

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
"""Hermes-style tool calls: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``."""

DEFAULT_MODEL_NAME = "default"
"""SGLang's ``model`` of a request that names none."""


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split Hermes-style ``<tool_call>`` blocks off ``text``.

    Returns:
        ``(content, tool_calls)``: the text without the blocks, and tool calls in SGLang's
        ``ToolCall`` shape (``id``, ``index``, ``type``, ``function`` with arguments as a JSON
        string). Blocks that are not valid JSON stay in the content.
    """
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(data, dict) or "name" not in data:
            return match.group(0)
        args = data.get("arguments", {})
        calls.append({
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "index": len(calls),
            "type": "function",
            "function": {
                "name": str(data["name"]),
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        })
        return ""

    content = TOOL_CALL_RE.sub(take, text)
    return (content.strip() if calls else content), calls


def rows_from_params(prompt_ids: list[int], params: dict[str, Any], n: int
                     ) -> list[GenerationRequest]:
    """One :class:`GenerationRequest` per choice from OpenAI/SGLang sampling parameters.

    Args:
        prompt_ids: the prompt's token ids.
        params: ``max_completion_tokens`` / ``max_tokens`` / ``max_new_tokens`` (tokens),
            ``temperature`` (default 1), ``top_p``, ``stop``, ``stop_token_ids``,
            ``ignore_eos``, ``seed`` (choice ``i`` uses ``seed + i``).
        n: number of choices.
    """
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens is None:
        max_tokens = params.get("max_new_tokens", 128)
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    seed = params.get("seed")
    temperature = params.get("temperature")
    rows = []
    for i in range(n):
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed) + i)
        rows.append(GenerationRequest(
            prompt_ids=list(prompt_ids),
            max_new_tokens=int(max_tokens),
            temperature=1.0 if temperature is None else float(temperature),
            top_p=float(params.get("top_p") or 1.0),
            stop=stop,
            stop_token_ids=list(params.get("stop_token_ids") or []),
            ignore_eos=bool(params.get("ignore_eos", False)),
            generator=generator,
        ))
    return rows


def _logprob_content(runner: ModelRunner, row: GenerationRequest) -> list[dict[str, Any]]:
    """SGLang's ``ChatCompletionTokenLogprob`` entries of a row's sampled tokens."""
    content = []
    for token_id, logprob in zip(row.output_ids, row.output_logprobs, strict=True):
        piece = runner.tokenizer.decode([token_id])
        content.append({
            "token": piece,
            "bytes": list(piece.encode("utf-8")),
            "logprob": logprob,
            "top_logprobs": [],
        })
    return content


def _choice(runner: ModelRunner, body: dict[str, Any], index: int, row: GenerationRequest
            ) -> dict[str, Any]:
    """One ``ChatCompletionResponseChoice`` (see the module docstring)."""
    content, tool_calls = parse_tool_calls(row.text) if body.get("tools") else (row.text, [])
    finish = row.finish_reason
    message: dict[str, Any] = {"role": "assistant", "content": content,
                               "reasoning_content": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
        finish = "tool_calls" if finish == "stop" else finish
    choice: dict[str, Any] = {
        "index": index,
        "message": message,
        "logprobs": {"content": _logprob_content(runner, row)} if body.get("logprobs") else None,
        "finish_reason": finish,
        "matched_stop": row.matched_stop,
    }
    if body.get("return_token_ids") or body.get("return_prompt_token_ids"):
        choice["prompt_token_ids"] = list(row.prompt_ids)
    if body.get("return_token_ids"):
        choice["response_token_ids"] = list(row.output_ids)
    return choice


def chat_response(
    runner: ModelRunner, body: dict[str, Any], rows: list[GenerationRequest]
) -> dict[str, Any]:
    """The ``ChatCompletionResponse`` of finished ``rows`` (one per choice) for ``body``."""
    prompt_tokens = len(rows[0].prompt_ids)
    completion_tokens = sum(len(r.output_ids) for r in rows)
    spans = rows[0].weight_versions or [
        {"version": runner.weight_version, "start": 0, "end": 0}
    ]
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or DEFAULT_MODEL_NAME,
        "choices": [_choice(runner, body, i, row) for i, row in enumerate(rows)],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        },
        "metadata": {"weight_version": spans[-1]["version"],
                     "weight_versions": [dict(s) for s in spans]},
    }
