"""From stored trajectories to training samples: :class:`DBRecordData` and the converters.

A :class:`~agentrl.databases.Record` (one trajectory) owns its LLM calls, the
:class:`~agentrl.databases.DispatchedSamplingTask` documents ordered by ``turn``. The converter
turns them into one :class:`DBRecordData` per *contiguous conversation*:

- **token-exact calls** (the service returned ``prompt_token_ids`` and ``completion_token_ids``,
  :func:`is_token_exact`): a later call extends the sequence when its prompt ids start with the
  previous call's prompt + completion ids, so the sequence is exactly what the engine saw and
  sampled; when they do not (the sampler rewrote the context, or the chat template re-tokenized
  an earlier answer differently), the call starts a new sequence;
- **calls without ids** (external services; the chat-template fallback of
  :mod:`agentrl.training.tokenization`): a later call extends the sequence when its request
  starts with the earlier call's messages plus that call's response;
- a token-exact call never extends a fallback sequence, nor the other way round.

Converters are registered by name (config ``record_converter``) with
:func:`register_record_converter`; ``default`` is :func:`convert_record_to_data_func`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from agentrl.databases.documents import (
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    calls_token_exact,
)
from agentrl.databases.objectstore import ObjectStore, internalize
from agentrl.errors import AlignmentError, UnknownConverterError


class TrainTurn(BaseModel):
    """One assistant turn of a sample that the policy generated and that is trained.

    Attributes:
        message_index: index of the assistant message in :attr:`DBRecordData.messages`.
        dispatch_id: the DispatchedSamplingTask that produced it.
        prompt_token_ids: token ids the engine prefilled for this turn (empty when the service
            gave none).
        completion_token_ids: token ids the engine sampled (empty when the service gave none).
        logprobs: behaviour log-probs of those ids, in nats (empty when not reported or when
            there are no ids to pair them with).
        temperature: temperature of the distribution the logprobs are of (``None``: the
            config's ``temperature``).
        created_at_step: global step when the call was made (for staleness).
        score: the trajectory's reward.
        advantage: the advantage the turn's tokens get.
        finish_reason: ``stop``, ``length``...
    """

    message_index: int
    dispatch_id: str
    prompt_token_ids: list[int] = Field(default_factory=list)
    completion_token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)
    temperature: float | None = None
    created_at_step: int = 0
    score: float = 0.0
    advantage: float = 0.0
    finish_reason: str | None = None


class DBRecordData(BaseModel):
    """One training sample: a contiguous conversation of one trajectory and its trained turns.

    Attributes:
        record_id: the Record it comes from.
        task_id: the Record's task (its group is ``(task_id, epoch)``).
        epoch: the Record's epoch.
        sequence_index: which contiguous conversation of the record (0, 1, ...).
        messages: OpenAI-format chat messages, ending with the last trained assistant message.
        tools: the tool schemas the calls were made with (``None``: no tools).
        turns: the trained assistant turns, in message order.
    """

    record_id: str
    task_id: str
    epoch: int = 0
    sequence_index: int = 0
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    turns: list[TrainTurn]

    @property
    def score(self) -> float:
        """The reward of the trajectory (the last turn's score)."""
        return self.turns[-1].score if self.turns else 0.0

    @property
    def token_exact(self) -> bool:
        """Whether every turn carries the engine's prompt and completion ids (the sequence is
        built from them, not by re-rendering the chat template)."""
        return bool(self.turns) and all(
            t.prompt_token_ids and t.completion_token_ids for t in self.turns
        )


RecordConverter = Callable[[Record, Sequence[DispatchedSamplingTask]], list[DBRecordData]]
"""A converter: the record (with ``score`` and ``advantage`` set) and its LLM calls in turn
order → training samples."""

_CONVERTERS: dict[str, RecordConverter] = {}


def register_record_converter(name: str) -> Callable[[RecordConverter], RecordConverter]:
    """Register a Record-to-samples converter under ``name`` (config ``record_converter``)."""

    def decorator(fn: RecordConverter) -> RecordConverter:
        _CONVERTERS[name] = fn
        return fn

    return decorator


def get_record_converter(name: str) -> RecordConverter:
    """The converter registered as ``name``.

    Raises:
        UnknownConverterError: nothing is registered under ``name``.
    """
    if name not in _CONVERTERS:
        raise UnknownConverterError(name, list(_CONVERTERS))
    return _CONVERTERS[name]


def response_message(call: DispatchedSamplingTask) -> dict[str, Any]:
    """The assistant message of a call's OpenAI response (``choices[0].message``).

    Raises:
        AlignmentError: the response has no message.
    """
    try:
        message = dict(call.response["choices"][0]["message"])  # type: ignore[index]
    except (TypeError, KeyError, IndexError) as exc:
        raise AlignmentError(
            call.record_id, f"dispatch {call.id} (turn {call.turn}) has no response message"
        ) from exc
    message["role"] = "assistant"
    if message.get("content") is None:
        message["content"] = ""
    return {k: v for k, v in message.items() if v is not None and k in _MESSAGE_KEYS}


_MESSAGE_KEYS = ("role", "content", "tool_calls", "name", "tool_call_id")


def _comparable(message: dict[str, Any]) -> tuple[Any, ...]:
    """A message reduced to what decides prefix equality (role, stripped content, tool calls).

    Tool-call ids are ignored (samplers may regenerate them); so are whitespace at the ends of
    text content and keys like ``refusal`` that engines add.
    """
    content = message.get("content")
    if isinstance(content, str):
        content = content.strip()
    elif content is None:
        content = ""
    calls = tuple(
        (c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
        for c in message.get("tool_calls") or []
    )
    return (message.get("role"), repr(content), calls, message.get("tool_call_id"))


def _extends(messages: Sequence[dict[str, Any]], prefix: Sequence[dict[str, Any]]) -> bool:
    """Whether ``messages`` starts with ``prefix`` (compared by :func:`_comparable`)."""
    if len(messages) < len(prefix):
        return False
    return all(_comparable(a) == _comparable(b) for a, b in zip(messages, prefix, strict=False))


def _call_is_token_exact(call: DispatchedSamplingTask) -> bool:
    return bool(call.prompt_token_ids and call.completion_token_ids)


def is_token_exact(calls: Sequence[DispatchedSamplingTask]) -> bool:
    """Whether a trajectory trains token-exact (:func:`agentrl.databases.calls_token_exact`)."""
    return calls_token_exact(calls)


def _extends_ids(call: DispatchedSamplingTask, current: DBRecordData) -> bool:
    """Whether a token-exact call's prompt ids continue the token-exact ``current`` sequence."""
    last = current.turns[-1]
    seen = last.prompt_token_ids + last.completion_token_ids
    return call.prompt_token_ids[: len(seen)] == seen


def _turn(record: Record, call: DispatchedSamplingTask, message_index: int) -> TrainTurn:
    """The trained turn of a completed call.

    Raises:
        AlignmentError: the call has token ids and logprobs of different lengths.
    """
    ids = list(call.completion_token_ids)
    if ids and call.logprobs and len(call.logprobs) != len(ids):
        raise AlignmentError(
            record.id,
            f"dispatch {call.id} (turn {call.turn}) has {len(ids)} token ids but "
            f"{len(call.logprobs)} logprobs",
        )
    return TrainTurn(
        message_index=message_index,
        dispatch_id=call.id,
        prompt_token_ids=list(call.prompt_token_ids),
        completion_token_ids=ids,
        logprobs=list(call.logprobs) if ids else [],
        temperature=call.temperature,
        created_at_step=call.created_at_step,
        score=float(record.score or 0.0),
        advantage=float(record.advantage or 0.0),
        finish_reason=call.finish_reason,
    )


@register_record_converter("default")
def convert_record_to_data_func(
    record: Record, calls: Sequence[DispatchedSamplingTask]
) -> list[DBRecordData]:
    """Turn one trajectory into training samples, merging calls that extend one conversation
    (by token ids when the calls have them, else by messages; see the module docstring).

    Every completed call is a trained assistant turn with the record's ``score`` and
    ``advantage``. Failed, cancelled or dropped calls are skipped.

    Args:
        record: the trajectory, with ``score`` and ``advantage`` set.
        calls: its LLM calls (any order; sorted by ``turn`` here).

    Returns:
        One sample per contiguous conversation, in turn order (empty when no call completed).

    Raises:
        AlignmentError: a call's token ids and logprobs differ in length, or it has no response.
    """
    samples: list[DBRecordData] = []
    current: DBRecordData | None = None
    for call in sorted(calls, key=lambda c: c.turn):
        if call.status != DispatchStatus.COMPLETED or call.response is None:
            continue
        request_messages = [dict(m) for m in call.request.get("messages", [])]
        tools = call.request.get("tools") or None
        turn = _turn(record, call, len(request_messages))
        answer = response_message(call)
        exact = _call_is_token_exact(call)
        if current is not None and current.tools == tools and current.token_exact == exact and (
            _extends_ids(call, current) if exact
            else _extends(request_messages, current.messages)
        ):
            current.messages = request_messages + [answer]
            current.turns.append(turn)
            continue
        current = DBRecordData(
            record_id=record.id,
            task_id=record.task_id,
            epoch=record.epoch,
            sequence_index=len(samples),
            messages=request_messages + [answer],
            tools=tools,
            turns=[turn],
        )
        samples.append(current)
    return samples


def _load_image(url: str) -> Image.Image:
    """Decode a ``data:`` URL into an RGB PIL image."""
    _, b64 = url.split(",", 1)
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def preprocess_mm_messages_for_sample(
    sample: DBRecordData, objects: ObjectStore
) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Load the images a sample's messages reference, for a multimodal processor.

    Object-store references (left by :func:`~agentrl.databases.objectstore.externalize`) are
    read back as ``data:`` URLs; every ``image_url`` part with a ``data:`` URL is decoded.

    Args:
        sample: the training sample.
        objects: the object store holding externalized images.

    Returns:
        ``(messages, images)``: the messages with references replaced by ``data:`` URLs, and the
        images in the order they appear (RGB PIL images).

    Raises:
        ObjectNotFoundError: a reference points at nothing.
    """
    messages: list[dict[str, Any]] = internalize(sample.messages, objects)
    images: list[Image.Image] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if isinstance(url, str) and url.startswith("data:"):
                images.append(_load_image(url))
    return messages, images
