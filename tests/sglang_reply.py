"""The ``/v1/chat/completions`` reply of SGLang 0.5.23, for the test stubs that stand in for it.

The shape is ``ChatCompletionResponse(...).model_dump()`` of sglang's
``srt/entrypoints/openai/protocol.py`` as ``serving_chat.py`` fills it: token ids only when the
request sets ``return_token_ids`` (``prompt_token_ids`` also with ``return_prompt_token_ids``),
logprob entries ``{token, bytes, logprob, top_logprobs}`` only with ``logprobs: true``,
``metadata`` with ``weight_version`` and its ``weight_versions`` spans.
``tests/inference/test_sglang_contract.py`` checks the stubs against sglang's own models.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


def sglang_chat_reply(
    body: dict[str, Any],
    content: str,
    prompt_ids: list[int],
    completion_ids: list[int],
    logprobs: list[float],
    finish_reason: str = "stop",
    weight_version: str = "0",
    matched_stop: int | str | None = None,
) -> dict[str, Any]:
    """The reply SGLang gives ``body`` when it sampled ``completion_ids`` (one choice).

    Args:
        body: the request.
        content: the message text.
        prompt_ids: the ids SGLang prefilled.
        completion_ids: the ids it sampled.
        logprobs: their logprobs (nats), one per id.
        finish_reason: ``stop`` | ``length`` | ``abort`` | ...
        weight_version: the served weights' version.
        matched_stop: the stop token id or string that ended it.
    """
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "reasoning_content": None},
        "logprobs": {"content": [
            {"token": str(t), "bytes": list(str(t).encode()), "logprob": lp, "top_logprobs": []}
            for t, lp in zip(completion_ids, logprobs, strict=True)
        ]} if body.get("logprobs") else None,
        "finish_reason": finish_reason,
        "matched_stop": matched_stop,
    }
    if body.get("return_token_ids") or body.get("return_prompt_token_ids"):
        choice["prompt_token_ids"] = list(prompt_ids)
    if body.get("return_token_ids"):
        choice["response_token_ids"] = list(completion_ids)
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "default",
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "total_tokens": len(prompt_ids) + len(completion_ids),
            "completion_tokens": len(completion_ids),
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        },
        "metadata": {
            "weight_version": weight_version,
            "weight_versions": [
                {"version": weight_version, "start": 0, "end": len(completion_ids)}
            ],
        },
    }
