"""The ledger's names and rules: every Redis key of a run, when a group carries signal, what
kind a failure is, how long an infrastructure retry waits."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import httpx
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from agentrl.databases import (
    ErrorKind,
    Record,
    RecordStatus,
    utcnow,
)
from agentrl.errors import (
    AgentEnvError,
    InferenceError,
    InferenceRequestError,
    InfrastructureError,
    InvalidOutputError,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.leases import OwnedSet

SCORE_SPREAD_TOLERANCE = 1e-6
"""Scores closer than this are the same score: a train group whose scores are all the same has
no GRPO signal and is ABANDONED (the only tolerance; the trainer uses it too)."""

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    InferenceError, AgentEnvError, InfrastructureError, ConnectionError, TimeoutError,
    PyMongoError, RedisError, httpx.TransportError, aiohttp.ClientError,
)
"""Exceptions that mean something outside the sampler failed (see :func:`classify_failure`)."""

INFRASTRUCTURE_BACKOFF_MAX_S = 300.0
"""Longest wait before an infrastructure failure is retried, in seconds."""

RECORD_FIELDS = frozenset(
    {field.alias or name for name, field in Record.model_fields.items()})
"""The stored names of the base Record's fields (the ledger's; a subclass's others are outputs)."""

Enqueue = Callable[[list[Claim]], object]
"""Sends claims as sampling messages (:func:`agentrl.celery_app.enqueue_claims`)."""

class RedisKeys:
    """Every Redis key of a run, under its ``key_prefix``.

    ``<p>:ledger:{leases,owners,claims}`` — trajectory leases (:class:`OwnedSet`);
    ``<p>:ledger:task_locks:*`` — one-at-a-time locks of stateful tasks;
    ``<p>:ledger:alive`` — set while Redis holds the run's ledger state (its absence means Redis
    lost it); ``<p>:counter:global_step`` — cache of :class:`GlobalStep`;
    ``<p>:lock:<name>`` — :class:`~agentrl.databases.DistributedLock` names;
    ``<p>:service:<id>:requests`` (+ ``:counts``) — requests running on an inference service:
    a member per worker process with its count (:mod:`agentrl.rollout.slots`);
    ``<p>:sampling:paused`` — why sampling waits (service name → reason);
    ``<p>:`` — the prefix of Celery's own keys (kombu ``global_keyprefix``).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def trajectories(self) -> OwnedSet:
        """Trajectory leases: record id → expiry, owner, claim JSON."""
        p = self.prefix
        return OwnedSet(f"{p}:ledger:leases", f"{p}:ledger:owners", f"{p}:ledger:claims",
                        self.alive)

    @property
    def task_locks(self) -> OwnedSet:
        """Stateful-task locks: task id → expiry, owner."""
        p = self.prefix
        return OwnedSet(f"{p}:ledger:task_locks", f"{p}:ledger:task_lock_owners",
                        f"{p}:ledger:task_lock_payloads", self.alive)

    @property
    def alive(self) -> str:
        """The marker that Redis holds this run's ledger state."""
        return f"{self.prefix}:ledger:alive"

    @property
    def global_step(self) -> str:
        """The cache of the global step (MongoDB's run state is the truth)."""
        return f"{self.prefix}:counter:global_step"

    def lock(self, name: str) -> str:
        """The key of the distributed lock ``name``."""
        return f"{self.prefix}:lock:{name}"

    def service_slots(self, service_id: str) -> str:
        """The sorted set of the processes running requests on service ``service_id`` (member →
        expiry; their counts in the hash ``<key>:counts``, a member without one is one request)."""
        return f"{self.prefix}:service:{service_id}:requests"

    @property
    def sampling_paused(self) -> str:
        """Hash service name → JSON reason, while calls wait for that service."""
        return f"{self.prefix}:sampling:paused"

    @property
    def celery_prefix(self) -> str:
        """The prefix of the broker's and result backend's keys."""
        return f"{self.prefix}:"

def has_spread(scores: Iterable[float]) -> bool:
    """Whether at least two scores differ by more than :data:`SCORE_SPREAD_TOLERANCE`."""
    values = list(scores)
    return len(values) >= 2 and max(values) - min(values) > SCORE_SPREAD_TOLERANCE

def group_outcome(task: dict[str, Any]) -> RecordStatus | None:
    """The status a task's group gets once every trajectory has an outcome, else ``None``.

    Args:
        task: the raw task document (``scores``, ``failed``, ``num_generations``, ``split``).

    Returns:
        ``READY`` for splits other than train; for train ``READY`` when at least two scores
        with spread remain after failures, else ``ABANDONED``; ``None`` while incomplete.
    """
    scores = task.get("scores") or {}
    failed = task.get("failed") or {}
    if len(set(scores) | set(failed)) < int(task.get("num_generations", 1)):
        return None
    if str(task.get("split", "train")) != "train":
        return RecordStatus.READY
    return RecordStatus.READY if has_spread(float(v) for v in scores.values()) else (
        RecordStatus.ABANDONED)


def scored_members(task: dict[str, Any]) -> dict[str, Any]:
    """The filter of a complete group's SCORED Records (the ones its status goes to).

    The members are named by id (``identity_id`` of every trajectory with an outcome): a
    lookup on the primary key, where a filter on ``task_id`` makes nx-27017 scan the collection
    while it holds the database.
    """
    epoch = int(task.get("epoch", 0))
    members = {*(task.get("scores") or {}), *(task.get("failed") or {})}
    ids = sorted(Record.identity_id(str(task["_id"]), int(t), epoch) for t in members)
    return {"_id": {"$in": ids}, "status": RecordStatus.SCORED.value}


def classify_failure(exc: BaseException) -> ErrorKind:
    """The kind of an attempt's failure (see :class:`~agentrl.databases.ErrorKind`).

    A request the inference service refused for good (HTTP 4xx other than 408/429) is the
    sampler's doing; connection errors, timeouts, 5xx, aborted replies, unreachable
    environments, tools and judges (:class:`~agentrl.errors.InfrastructureError`) are
    infrastructure; output that cannot be stored is ``invalid_output``; anything else raised
    by ``run`` or ``evaluate_record`` is ``sampler``.
    """
    if isinstance(exc, InvalidOutputError):
        return ErrorKind.INVALID_OUTPUT
    if isinstance(exc, InferenceRequestError) and not exc.transient:
        return ErrorKind.SAMPLER
    if isinstance(exc, INFRASTRUCTURE_ERRORS):
        return ErrorKind.INFRASTRUCTURE
    return ErrorKind.SAMPLER

def infrastructure_backoff_s(failures: int, base_s: float) -> float:
    """Seconds before retrying after the ``failures``-th infrastructure failure: ``base_s``
    doubled per failure, capped at :data:`INFRASTRUCTURE_BACKOFF_MAX_S`, with ±25 % jitter."""
    delay = min(INFRASTRUCTURE_BACKOFF_MAX_S, base_s * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.75, 1.25)

def worker_name() -> str:
    """``host:pid`` of this process (stored on the Records it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"

def outcome_update(traj_id: int, score: float | None, failed: ErrorKind | None) -> dict:
    """The task update that records one trajectory's outcome (idempotent)."""
    key = str(traj_id)
    if failed is None:
        return {"$set": {f"scores.{key}": float(score or 0.0), "updated_at": utcnow()},
                "$unset": {f"failed.{key}": ""}}
    return {"$set": {f"failed.{key}": failed.value, "updated_at": utcnow()},
            "$unset": {f"scores.{key}": ""}}

def claim_of(raw: dict[str, Any]) -> Claim:
    """The claim of a stored Record (its identity and how it is sampled)."""
    return Claim(
        task_id=str(raw["task_id"]), traj_id=int(raw["traj_id"]), epoch=int(raw["epoch"]),
        split=str(raw.get("split", "train")), sampler=str(raw.get("sampler") or ""),
        model=str(raw.get("model") or ""), resample=bool(raw.get("resample", True)),
    )
