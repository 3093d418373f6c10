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
from collections.abc import Sequence
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

    - ``created``: the claim is queued (inserted when the epoch is pushed; a trajectory whose
      attempt failed and will be started again goes back to ``created``, keeping the error).
    - ``running``: an attempt holds the lease (written when the attempt starts).
    - ``completed`` / ``scoring``: ``run`` ended and the outputs are being scored. These are
      written only when scoring lasts longer than ``status_write_linger_s``; a fast scorer's
      ``completed → scoring → scored`` reaches MongoDB as one write (the outputs with the score).
    - ``failed``: final; the trajectory left its group (see ``error_kind`` and ``error``).
    - ``scored``: final for the trajectory; ``ready`` or ``abandoned`` once its group completes
      (``abandoned``: the group's scores have no spread, so it carries no GRPO signal).
    - ``stale``: final; a READY record the trainer dropped untrained because its group was
      sampled more than ``max_staleness`` steps before the step that would train it.
    """

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SCORING = "scoring"
    SCORED = "scored"
    READY = "ready"
    ABANDONED = "abandoned"
    STALE = "stale"


class DispatchStatus(StrEnum):
    """DispatchedSamplingTask lifecycle: ``pending → running → completed | failed | cancelled |
    dropped``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DROPPED = "dropped"


FINAL_RECORD_STATUSES = frozenset({"failed", "scored", "ready", "abandoned", "stale"})
"""Record statuses after which no attempt starts again (values of :class:`RecordStatus`)."""


class ErrorKind(StrEnum):
    """Why an attempt of a trajectory failed.

    - ``infrastructure``: the worker was lost, the inference service or an environment was
      unreachable or died, a timeout; the trajectory is started again and never scored on it.
    - ``sampler``: an exception in the sampler's ``run`` or ``evaluate_record``.
    - ``invalid_output``: the sampler's output cannot be stored (a value BSON cannot hold, a
      Record over MongoDB's 16 MiB after large values went to the object store).
    """

    INFRASTRUCTURE = "infrastructure"
    SAMPLER = "sampler"
    INVALID_OUTPUT = "invalid_output"


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
    ``scores`` maps ``str(traj_id)`` to the trajectory's score and ``failed`` the trajectories
    that left the group to their error kind, so pushing an outcome twice (a redelivered message)
    overwrites instead of duplicating. The group is complete when every ``traj_id`` is in one.
    """

    collection_name: ClassVar[str] = "tasks"

    split: str = Field("train", description="Dataset split: train, eval, ...")
    epoch: int = Field(0, ge=0, description="Epoch this task was pushed for (1-based when pushed).")
    index: int = Field(0, ge=0, description="Position of the task in its dataset.")
    added_step: int = Field(0, ge=0, description="Global training step when pushed.")
    status: TaskStatus = TaskStatus.CREATED
    num_generations: int = Field(1, ge=1, description="Trajectories expected for this epoch.")
    sampler: str = Field("", description="Registered sampler name that samples this task.")
    released: bool = Field(
        True,
        description="Whether its claims were sent (with max_staleness, beat releases train "
        "tasks as the staleness budget allows).",
    )
    scores: dict[str, float] = Field(default_factory=dict, description="traj_id → score.")
    failed: dict[str, str] = Field(
        default_factory=dict,
        description="traj_id → error kind of the trajectories that left the group (FAILED).",
    )
    state: dict[str, Any] = Field(
        default_factory=dict, description="State shared by stateful samplers across trajectories."
    )


@register_new_model
class Record(Document):
    """One trajectory: the identity ``(task_id, traj_id, epoch)`` is unique.

    ``id`` is derived from the identity (:meth:`identity_id`), so a redelivered message finds the
    same document. Every start of the trajectory is a new ``attempt`` (1, 2, ...): writes of the
    Record are conditioned on it, so a copy that lost its lease writes nothing, and only the
    calls of the Record's own attempt are trained. Training reuse is tracked by
    ``trained_count`` and ``last_trained_step``; a trainer holding the record for a step that is
    not yet checkpointed is named by the ``train_claim_*`` fields.
    """

    collection_name: ClassVar[str] = "records"

    task_id: str
    traj_id: int = Field(ge=0)
    epoch: int = Field(ge=0)
    split: str = "train"
    sampler: str = Field("", description="Registered sampler name of the trajectory.")
    model: str = Field("", description="Served model it asks for ('': the configured one).")
    resample: bool = Field(True, description="Whether a sampler failure is sampled again.")
    status: RecordStatus = RecordStatus.CREATED
    score: float | None = Field(None, description="Scalar reward of the trajectory.")
    advantage: float | None = Field(None, description="Group-relative advantage, once computed.")
    error: str | None = Field(None, description="Why the last attempt failed (kind: message).")
    error_kind: ErrorKind | None = Field(None, description="Kind of the last attempt's failure.")
    attempt: int = Field(0, ge=0, description="Number of the attempt that holds (held) it.")
    failed_attempt: int | None = Field(None, description="The attempt the error is from.")
    infrastructure_failures: int = Field(
        0, ge=0, description="Attempts ended by infrastructure failures (not charged)."
    )
    worker: str | None = Field(None, description="host:pid of the attempt's worker process.")
    created_at_step: int = Field(0, ge=0, description="Global step when sampling started.")
    started_at: UTCDateTime | None = Field(None, description="Start of the current attempt.")
    finished_at: UTCDateTime | None = Field(None, description="End of sampling and scoring.")
    token_exact: bool | None = Field(
        None, description="Every call of the attempt returned the engine's token ids."
    )
    trained_count: int = Field(0, ge=0, description="Optimizer steps that used this record.")
    last_trained_step: int | None = Field(None, description="Last step that trained on it.")
    train_claim_owner: str = Field("", description="Trainer holding it for a step ('': none).")
    train_claim_step: int = Field(0, ge=0, description="The step it is held for.")
    train_claim_expires_ts: float = Field(
        0.0, description="Unix seconds when the trainer claim lapses (0: not claimed)."
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Sampler-specific data.")

    @property
    def attempts(self) -> int:
        """Times this trajectory was started (the AgentRL guide's name for ``attempt``)."""
        return self.attempt

    @staticmethod
    def identity_id(task_id: str, traj_id: int, epoch: int) -> str:
        """The deterministic id of the Record with identity ``(task_id, traj_id, epoch)``."""
        return f"{task_id}:{traj_id}:{epoch}"


@register_new_model
class DispatchedSamplingTask(Document):
    """One LLM call of a trajectory: request, response, the engine's tokens and their logprobs.

    ``prompt_token_ids`` are the ids the engine prefilled and ``completion_token_ids`` the ids it
    sampled (both empty for services that return no ids); ``completion_token_ids[i]`` was sampled
    with behaviour logprob ``logprobs[i]`` (natural log) of the distribution at ``temperature``.
    """

    collection_name: ClassVar[str] = "dispatched_sampling_tasks"

    record_id: str
    task_id: str
    attempt: int = Field(0, ge=0, description="The Record attempt that made the call.")
    turn: int = Field(0, ge=0, description="Index of this call within its attempt.")
    status: DispatchStatus = DispatchStatus.PENDING
    request: dict[str, Any] = Field(default_factory=dict, description="messages, tools, params.")
    response: dict[str, Any] | None = Field(None, description="The OpenAI-format response.")
    prompt_token_ids: list[int] = Field(
        default_factory=list, description="Token ids the engine prefilled (SGLang's choice field)."
    )
    completion_token_ids: list[int] = Field(
        default_factory=list, description="Token ids the engine sampled (response_token_ids)."
    )
    logprobs: list[float] = Field(default_factory=list, description="Behaviour logprobs (nats).")
    temperature: float | None = Field(
        None,
        description=(
            "Temperature of the distribution the logprobs are of (1.0 for greedy calls; None: "
            "the request set none)."
        ),
    )
    finish_reason: str | None = Field(None, description="stop | length | tool_calls | ...")
    service_id: str | None = None
    endpoint: str | None = None
    model: str | None = None
    weight_version: str | None = Field(
        None, description="Weights that sampled the call's first token (all of them, unless "
        "weight_versions lists several)."
    )
    weight_versions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="[{version, start, end}] output-token spans when several weight versions "
        "sampled the call (an update while it was paused); empty otherwise.",
    )
    created_at_step: int = Field(0, ge=0, description="Global step when the call was made.")
    started_at: UTCDateTime | None = None
    finished_at: UTCDateTime | None = None
    latency_s: float | None = Field(None, description="Wall time of the call in seconds.")
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="Observation refs, actions...")

    @property
    def token_exact(self) -> bool:
        """Whether the call carries the engine's prompt and completion ids."""
        return bool(self.prompt_token_ids and self.completion_token_ids)


@register_new_model
class InferenceService(Document):
    """An OpenAI-compatible inference endpoint that samplers route calls to.

    The requests running on it are not a field: each is an expiring lease in Redis (see
    :class:`agentrl.rollout.ledger.RedisKeys`), so a killed worker's requests stop counting
    after ``lease_ttl_s``.

    ``api_key`` is stored (external services need it) but never printed: it is a
    :class:`~pydantic.SecretStr`, and status views use :meth:`public_view`.
    """

    collection_name: ClassVar[str] = "inference_services"

    name: str = Field(description="Unique service name, e.g. 'dp0@host'.")
    endpoint: str = Field(description="Base URL, e.g. http://127.0.0.1:30000.")
    models: list[str] = Field(default_factory=list, description="Model names it serves.")
    kind: str = Field("cpu", description="sglang | cpu | external")
    status: ServiceStatus = ServiceStatus.DOWN
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
    managed: bool = Field(
        True,
        description=(
            "Started and heartbeated by an InferenceManager; a service registered with "
            "`agentrl services add` is not, and is routed to without a heartbeat."
        ),
    )
    api_key: SecretStr | None = Field(None, description="Bearer key for external endpoints.")

    def public_view(self) -> dict[str, Any]:
        """The document for status output: everything but the API key."""
        data = self.to_mongo()
        data.pop("api_key", None)
        data.pop(TYPE_FIELD, None)
        return data


RUN_STATE_ID = "run"
"""The ``_id`` of the one :class:`RunState` document of a run's database."""


@register_new_model
class RunState(Document):
    """The durable state of a run: the global step and each split's pushed epoch.

    One document (id :data:`RUN_STATE_ID`) per run database. Redis keeps a cache of the global
    step for samplers (rebuilt from here when Redis comes back empty).
    """

    collection_name: ClassVar[str] = "run_state"

    id: str = Field(RUN_STATE_ID, alias="_id", description="Always 'run'.")
    global_step: int = Field(0, ge=0, description="Optimizer steps in the served weights.")
    pushed_epochs: dict[str, int] = Field(
        default_factory=dict, description="split → last epoch whose claims were all sent."
    )
    training_finished: bool = Field(
        False, description="The trainer is done (max_steps): no more train epochs are pushed."
    )


def calls_token_exact(calls: Sequence[DispatchedSamplingTask]) -> bool:
    """Whether a trajectory trains token-exact: every completed call carries the engine's prompt
    and completion ids (else its calls train through the chat-template fallback).

    Args:
        calls: the trajectory's LLM calls (any status).

    Returns:
        False when no call completed.
    """
    done = [c for c in calls if c.status == DispatchStatus.COMPLETED and c.response is not None]
    return bool(done) and all(c.token_exact for c in done)
