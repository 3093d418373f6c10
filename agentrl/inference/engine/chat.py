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

import time
import uuid
from typing import Any

import torch

from agentrl.inference.engine.runner import GenerationRequest, ModelRunner
from agentrl.inference.tool_calls import parse_tool_calls

DEFAULT_MODEL_NAME = "default"
"""SGLang's ``model`` of a request that names none."""


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
    content, tool_calls = row.text, []
    if body.get("tools"):  # Hermes blocks become SGLang ToolCalls; malformed ones stay text
        parsed = parse_tool_calls(row.text)
        content = parsed.content
        tool_calls = [{**c.to_openai(), "index": i} for i, c in enumerate(parsed.calls)]
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
