"""SGLang 0.5.23's ``/v1/chat/completions`` wire format: the body agentrl sends, what it reads back.

Read from sglang 0.5.23's own ``srt/entrypoints/openai/protocol.py`` (``ChatCompletionRequest``,
``ChatCompletionResponse``), ``serving_chat.py`` and ``srt/layers/sampler.py``:

- **request**: the config's ``temperature`` / ``top_p`` / ``max_tokens`` unless the caller
  overrides them, ``logprobs: true`` and, for services that return token ids (kinds ``sglang``
  and ``cpu``), ``return_token_ids: true``. SGLang-only fields (:data:`SGLANG_EXTENSIONS`) are
  removed before a call to an ``external`` OpenAI-compatible service.
- **response**: with ``return_token_ids`` each choice carries ``prompt_token_ids`` (the ids the
  engine prefilled) and ``response_token_ids`` (the ids it sampled);
  ``logprobs.content[i]`` = ``{token, bytes, logprob, top_logprobs}`` (no id) is the logprob of
  ``response_token_ids[i]``. ``metadata.weight_version`` is the version after the last token;
  ``metadata.weight_versions`` = ``[{version, start, end}]`` spans of output tokens per version.
- **logprobs** are those of the sampling distribution, ``log_softmax(logits / T)`` (SGLang's
  default, unless ``SGLANG_RETURN_ORIGINAL_LOGPROB`` is set); a temperature below
  :data:`GREEDY_TEMPERATURE` is greedy and its logprobs are those of ``T = 1``.
- a reply with ``finish_reason: "abort"`` (an interrupted request) or with no choices is not a
  completion: :func:`parse_chat_completion` raises :class:`~agentrl.errors.UnusableResponseError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import InferenceRequestError, UnusableResponseError

TOKEN_ID_KINDS = frozenset({"sglang", "cpu"})
"""Service kinds that return prompt and completion token ids when asked."""

SGLANG_EXTENSIONS = ("return_token_ids", "ignore_eos", "stop_token_ids")
"""Request fields of SGLang that are not OpenAI's: not sent to ``external`` services."""

GREEDY_TEMPERATURE = 1e-6
"""SGLang's ``_SAMPLING_EPS``: a lower temperature samples greedily (logprobs at ``T = 1``)."""


def build_chat_body(
    config: AgentTrainingConfig,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The chat-completions body: config sampling defaults, then ``params``; logprobs and token
    ids asked for.

    Args:
        config: ``temperature``, ``top_p``, ``max_new_tokens``.
        model: the served model name.
        messages: OpenAI chat messages.
        tools: OpenAI tool definitions (omitted when empty).
        params: request fields that override the defaults (``max_tokens``, ``seed``, ...).

    Returns:
        A body that validates as SGLang's ``ChatCompletionRequest``; send it to an external
        service through :func:`body_for_kind`.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "logprobs": True,
        "return_token_ids": True,
    }
    if "max_tokens" not in params and "max_completion_tokens" not in params:
        body["max_tokens"] = config.max_new_tokens
    if tools:
        body["tools"] = tools
    body.update(params)
    return body


def body_for_kind(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """``body`` as sent to a service of ``kind``: without :data:`SGLANG_EXTENSIONS` unless the
    service returns token ids (:data:`TOKEN_ID_KINDS`)."""
    if kind in TOKEN_ID_KINDS:
        return body
    return {k: v for k, v in body.items() if k not in SGLANG_EXTENSIONS}


def logprob_temperature(body: dict[str, Any]) -> float | None:
    """The temperature of the distribution whose logprobs a request gets back.

    Returns:
        ``body["temperature"]``, ``1.0`` for a greedy request (below
        :data:`GREEDY_TEMPERATURE`), ``None`` when the body sets none (the server's default).
    """
    temperature = body.get("temperature")
    if temperature is None:
        return None
    return 1.0 if float(temperature) < GREEDY_TEMPERATURE else float(temperature)


@dataclass(frozen=True)
class ChatCompletion:
    """What a call stores from the first choice of a chat-completions reply.

    Attributes:
        prompt_token_ids: ids the engine prefilled (empty when the service returns none).
        completion_token_ids: ids it sampled; ``completion_token_ids[i]`` pairs with
            ``logprobs[i]`` (empty when the service returns none).
        logprobs: behaviour logprob of each sampled token, in nats.
        finish_reason: ``stop`` | ``length`` | ``tool_calls`` | ...
        weight_version: the version of the weights that sampled the first token (the oldest),
            else ``metadata.weight_version``; ``None`` when the reply names none.
        weight_versions: the ``[{version, start, end}]`` spans when more than one version
            sampled the tokens (weights updated while the request was paused), else empty.
    """

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None
    weight_version: str | None = None
    weight_versions: list[dict[str, Any]] = field(default_factory=list)


def parse_chat_completion(data: Any, endpoint: str) -> ChatCompletion:
    """Read a ``/v1/chat/completions`` reply (SGLang 0.5.23's field names).

    Args:
        data: the decoded JSON body.
        endpoint: the service URL (for errors).

    Returns:
        The first choice's ids, logprobs, finish reason and weight version.

    Raises:
        InferenceRequestError: the body is not a JSON object.
        UnusableResponseError: it has no choices, or a choice ended with ``finish_reason:
            "abort"`` (transient: the call is retried).
    """
    if not isinstance(data, dict):
        raise InferenceRequestError(endpoint, "the response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UnusableResponseError(endpoint, "the response has no choices")
    if any(isinstance(c, dict) and c.get("finish_reason") == "abort" for c in choices):
        raise UnusableResponseError(
            endpoint, "the server aborted the request (finish_reason abort)", "abort"
        )
    choice = choices[0]
    content = (choice.get("logprobs") or {}).get("content") or []
    metadata = data.get("metadata") or {}
    spans = [dict(s) for s in metadata.get("weight_versions") or []]
    version = spans[0]["version"] if spans else metadata.get("weight_version")
    return ChatCompletion(
        prompt_token_ids=[int(i) for i in choice.get("prompt_token_ids") or []],
        completion_token_ids=[int(i) for i in choice.get("response_token_ids") or []],
        logprobs=[float(item["logprob"]) for item in content],
        finish_reason=choice.get("finish_reason"),
        weight_version=None if version is None else str(version),
        weight_versions=spans if len({s["version"] for s in spans}) > 1 else [],
    )
