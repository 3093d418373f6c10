"""Pydantic documents stored in MongoDB, their lifecycles, and the model registry.

Documents (AgentRL guide names): :class:`Task`, :class:`Record` (one trajectory),
:class:`DispatchedSamplingTask` (one LLM call), :class:`InferenceService`. Each has a string-enum
status whose values are the lifecycles of DESIGN.md, stored readably.

Subclasses are registered with :func:`register_new_model`; they are stored in their base's
collection with a ``_type`` discriminator and load back as the subclass, validated::

    @register_new_model
    class RFTTask(Task):
        inputs: list[dict]
        target: str

Documents reference each other by plain id fields (``task_id``, ``record_id``), never DBRef.
Datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from agentrl.errors import DuplicateModelError, UnknownModelError
from agentrl.redefinition import is_redefinition

TYPE_FIELD = "_type"
"""Name of the discriminator field stored with every document."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as timezone-aware UTC; a naive value is taken to be UTC already.

    Servers differ in what they give back: pymongo returns naive datetimes unless ``tz_aware``,
    and nx-27017 returns a datetime written with ``$set`` as a string, which pydantic parses naive.
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]
"""A datetime field that always holds timezone-aware UTC."""


def new_id() -> str:
    """A fresh random document id (32 hex characters)."""
    return uuid.uuid4().hex


class TaskStatus(StrEnum):
    """Task lifecycle: ``created → running → (waiting) → completed``."""

    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"


class RecordStatus(StrEnum):
    """Record lifecycle: ``created → running → completed | failed → scoring → scored → ready``.

    ``abandoned``: the record's group has no score spread, so it carries no GRPO signal.
    """

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SCORING = "scoring"
    SCORED = "scored"
    READY = "ready"
    ABANDONED = "abandoned"


class DispatchStatus(StrEnum):
    """DispatchedSamplingTask lifecycle: ``pending → running → completed | failed | cancelled |
    dropped``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"


class ServiceStatus(StrEnum):
    """InferenceService status: ``UP`` takes traffic, ``DOWN`` does not."""

    UP = "UP"
    DOWN = "DOWN"


D = TypeVar("D", bound="Document")

_REGISTRY: dict[str, type[Document]] = {}


class Document(BaseModel):
    """Base of stored documents: an id, timestamps, and the collection it lives in.

    Class attributes:
        collection_name: the MongoDB collection of this class and all its subclasses.
    """

    model_config = ConfigDict(populate_by_name=True, use_enum_values=False)

    collection_name: ClassVar[str] = ""

    id: str = Field(default_factory=new_id, alias="_id", description="Document id.")
    created_at: UTCDateTime = Field(default_factory=utcnow, description="Creation time (UTC).")
    updated_at: UTCDateTime = Field(default_factory=utcnow, description="Last update time (UTC).")

    def to_mongo(self) -> dict[str, Any]:
        """The document as stored: ``_id``, ``_type`` and JSON-compatible fields."""
        data = self.model_dump(by_alias=True, mode="python")
        for key, value in list(data.items()):
            if isinstance(value, StrEnum):
                data[key] = value.value
            elif isinstance(value, SecretStr):
                data[key] = value.get_secret_value()
        data[TYPE_FIELD] = type(self).__name__
        return data

    @classmethod
    def from_mongo(cls: type[D], raw: dict[str, Any]) -> D:
        """Load a stored document as its registered class (a subclass of ``cls``).

        Raises:
            UnknownModelError: ``_type`` names no registered class.
            pydantic.ValidationError: the stored fields do not validate.
        """
        raw = dict(raw)
        name = raw.pop(TYPE_FIELD, cls.__name__)
        model = _REGISTRY.get(name)
        if model is None or not issubclass(model, cls):
            raise UnknownModelError(name, raw.get("_id"))
        return model.model_validate(raw)  # type: ignore[return-value]


def register_new_model(cls: type[D]) -> type[D]:
    """Register a document subclass so stored documents load back as it (a class decorator).

    Args:
        cls: a subclass of :class:`Task`, :class:`Record`, :class:`DispatchedSamplingTask`,
            :class:`InferenceService` (or another :class:`Document` with ``collection_name``).

    Returns:
        ``cls`` unchanged.

    Raises:
        DuplicateModelError: another class of the same name is already registered (the same
            class defined again by the same file, a script imported as ``__main__`` and by its
            module name, replaces it: :func:`~agentrl.redefinition.is_redefinition`).
        TypeError: ``cls`` is not a Document subclass with a collection.
    """
    if not (isinstance(cls, type) and issubclass(cls, Document) and cls.collection_name):
        raise TypeError(f"{cls!r} must subclass a stored Document such as Task or Record")
    name = cls.__name__
    if name in _REGISTRY and not is_redefinition(_REGISTRY[name], cls):
        raise DuplicateModelError(name)
    _REGISTRY[name] = cls
    return cls


def registered_models() -> dict[str, type[Document]]:
    """A copy of the registry: type name → class."""
    return dict(_REGISTRY)


@register_new_model
class Task(Document):
    """One problem of a dataset, pushed for one split and epoch.

    A train task is sampled ``num_generations`` times per epoch (one Record per ``traj_id``).
    ``scores`` maps ``str(traj_id)`` to the trajectory's score, so pushing a score twice (a
    redelivered message) overwrites instead of duplicating.
    """

    collection_name: ClassVar[str] = "tasks"

    split: str = Field("train", description="Dataset split: train, eval, ...")
    epoch: int = Field(0, ge=0, description="Epoch this task was pushed for (1-based when pushed).")
    index: int = Field(0, ge=0, description="Position of the task in its dataset.")
    added_step: int = Field(0, ge=0, description="Global training step when pushed.")
    status: TaskStatus = TaskStatus.CREATED
    num_generations: int = Field(1, ge=1, description="Trajectories expected for this epoch.")
    sampler: str = Field("", description="Registered sampler name that samples this task.")
    scores: dict[str, float] = Field(default_factory=dict, description="traj_id → score.")
    state: dict[str, Any] = Field(
        default_factory=dict, description="State shared by stateful samplers across trajectories."
    )


@register_new_model
class Record(Document):
    """One trajectory: the identity ``(task_id, traj_id, epoch)`` is unique.

    ``id`` is derived from the identity (:meth:`identity_id`), so a redelivered message finds the
    same document. Training reuse is tracked by ``trained_count`` and ``last_trained_step``.
    """

    collection_name: ClassVar[str] = "records"

    task_id: str
    traj_id: int = Field(ge=0)
    epoch: int = Field(ge=0)
    split: str = "train"
    status: RecordStatus = RecordStatus.CREATED
    score: float | None = Field(None, description="Scalar reward of the trajectory.")
    advantage: float | None = Field(None, description="Group-relative advantage, once computed.")
    error: str | None = Field(None, description="Why sampling or scoring failed.")
    attempts: int = Field(0, ge=0, description="Times this trajectory was started.")
    created_at_step: int = Field(0, ge=0, description="Global step when sampling started.")
    trained_count: int = Field(0, ge=0, description="Optimizer steps that used this record.")
    last_trained_step: int | None = Field(None, description="Last step that trained on it.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Sampler-specific data.")

    @staticmethod
    def identity_id(task_id: str, traj_id: int, epoch: int) -> str:
        """The deterministic id of the Record with identity ``(task_id, traj_id, epoch)``."""
        return f"{task_id}:{traj_id}:{epoch}"


@register_new_model
class DispatchedSamplingTask(Document):
    """One LLM call of a trajectory: request, response, sampled tokens and their logprobs.

    ``completion_token_ids[i]`` was sampled with behaviour logprob ``logprobs[i]`` (natural log).
    """

    collection_name: ClassVar[str] = "dispatched_sampling_tasks"

    record_id: str
    task_id: str
    turn: int = Field(0, ge=0, description="Index of this call within its trajectory.")
    status: DispatchStatus = DispatchStatus.PENDING
    request: dict[str, Any] = Field(default_factory=dict, description="messages, tools, params.")
    response: dict[str, Any] | None = Field(None, description="The OpenAI-format response.")
    completion_token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list, description="Behaviour logprobs (nats).")
    finish_reason: str | None = Field(None, description="stop | length | tool_calls | ...")
    service_id: str | None = None
    endpoint: str | None = None
    model: str | None = None
    weight_version: str | None = Field(None, description="Weights that answered the call.")
    created_at_step: int = Field(0, ge=0, description="Global step when the call was made.")
    started_at: UTCDateTime | None = None
    finished_at: UTCDateTime | None = None
    latency_s: float | None = Field(None, description="Wall time of the call in seconds.")
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="Observation refs, actions...")


@register_new_model
class InferenceService(Document):
    """An OpenAI-compatible inference endpoint that samplers route calls to.

    ``api_key`` is stored (external services need it) but never printed: it is a
    :class:`~pydantic.SecretStr`, and status views use :meth:`public_view`.
    """

    collection_name: ClassVar[str] = "inference_services"

    name: str = Field(description="Unique service name, e.g. 'dp0@host'.")
    endpoint: str = Field(description="Base URL, e.g. http://127.0.0.1:30000.")
    models: list[str] = Field(default_factory=list, description="Model names it serves.")
    kind: str = Field("cpu", description="sglang | cpu | external")
    status: ServiceStatus = ServiceStatus.DOWN
    running_req_count: int = Field(0, description="Requests routed to it and not yet finished.")
    heartbeat_at: UTCDateTime = Field(default_factory=utcnow, description="Last heartbeat (UTC).")
    heartbeat_ts: float = Field(
        default_factory=time.time,
        description=(
            "Last heartbeat in unix seconds; routing compares this number, because a datetime "
            "written with $set is not range-comparable on every MongoDB-wire server."
        ),
    )
    weight_version: str = Field("0", description="Version of the weights it serves.")
    dp_rank: int = Field(0, ge=0)
    api_key: SecretStr | None = Field(None, description="Bearer key for external endpoints.")

    def public_view(self) -> dict[str, Any]:
        """The document for status output: everything but the API key."""
        data = self.to_mongo()
        data.pop("api_key", None)
        data.pop(TYPE_FIELD, None)
        return data
