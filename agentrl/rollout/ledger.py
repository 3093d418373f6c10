"""`TrajectoryLedger`: the one owner of a trajectory's life, and of every Redis key name.

A trajectory is the Record ``task_id:traj_id:epoch``. Its life, step by step (each step names
the function that makes it):

1. **claim** — :func:`open_claims` (beat's epoch push, an evaluation) inserts the Record
   ``created`` and sends one message per claim; Redis gets the run's ``alive`` marker.
2. **lease** — :meth:`TrajectoryLedger.acquire`: a worker takes the trajectory's lease (a member
   of the ``leases`` sorted set, expiry as score, its owner token and the JSON claim in two
   hashes) *before* the message is acknowledged, so the claim is always in the broker or under
   a lease. The process's :class:`~agentrl.rollout.leases.LeaseKeeper` extends it every
   ``heartbeat_interval_s``.
3. **attempt** — :meth:`TrajectoryLedger.start`: one conditional update increments ``attempt``
   and marks the Record ``running`` (a message naming no Record of this database is another
   run's and is dropped). A final Record (a late redelivery) ends the start with
   :class:`~agentrl.errors.TrajectoryFinishedError` after making sure its outcome reached the
   group. Attempts count at start, so a worker killed on every attempt still reaches the cap.
4. **calls** — :meth:`Attempt.log_call`: each DispatchedSamplingTask carries the attempt and goes
   ``pending → running → completed`` through the process's write buffer.
5. **finish** — :meth:`Attempt.complete`: the outputs pass the storage boundary
   (:mod:`agentrl.rollout.storable`), the Record becomes ``scored`` in one write conditioned on
   the attempt (a stale copy's write matches nothing: :class:`~agentrl.errors.LeaseLostError`),
   the score is set in the task (``scores.<traj_id>``) and the group's last member marks the
   group ``ready`` (``abandoned`` without spread) and the task ``completed``.
6. **failure** — :meth:`Attempt.fail` classifies the error (:func:`classify_failure`):
   ``infrastructure`` is retried after a backoff and not charged to ``max_sample_attempts``;
   ``sampler`` / ``invalid_output`` are retried while attempts remain
   (``resample_error_records``), then the Record is ``failed``: it leaves its group, which
   completes from the scored rest (``ready`` with at least two scores and spread).
7. **requeue** — :func:`housekeep` (beat) re-sends claims whose lease lapsed (a dead or frozen
   worker) and retries that are due, rebuilds the claims of unfinished epochs from MongoDB when
   Redis came back empty, and completes groups whose last member died after scoring.

Redis holds only what can be rebuilt (leases, queues, locks, the global step cache); MongoDB
holds the Records, tasks, calls and the run state (:class:`GlobalStep`, pushed epochs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, PyMongoError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    FINAL_RECORD_STATUSES,
    RUN_STATE_ID,
    AsyncMongoStore,
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    ErrorKind,
    Record,
    RecordStatus,
    RunState,
    Task,
    TaskStatus,
    utcnow,
)
from agentrl.databases.objectstore import ObjectStore
from agentrl.errors import (
    AgentEnvError,
    ForeignClaimError,
    InferenceError,
    InferenceRequestError,
    InfrastructureError,
    InvalidOutputError,
    LeaseLostError,
    TrajectoryFinishedError,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.leases import LeaseKeeper, OwnedSet, owned_members, take_expired
from agentrl.rollout.storable import check_document_size, to_storable
from agentrl.rollout.writes import WriteBuffer
from agentrl.training.datasets import is_token_exact

log = logging.getLogger(__name__)

SCORE_SPREAD_TOLERANCE = 1e-6
"""Scores closer than this are the same score: a train group whose scores are all the same has
no GRPO signal and is ABANDONED (the only tolerance; the trainer uses it too)."""

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    InferenceError, AgentEnvError, InfrastructureError, ConnectionError, TimeoutError,
    PyMongoError, RedisError, httpx.TransportError,
)
"""Exceptions that mean something outside the sampler failed (see :func:`classify_failure`)."""

INFRASTRUCTURE_BACKOFF_MAX_S = 300.0
"""Longest wait before an infrastructure failure is retried, in seconds."""

REBUILD_GRACE_FACTOR = 2.0
"""After Redis comes back empty, housekeeping waits this many heartbeats before rebuilding
claims, so that running workers first retake their leases."""

_RECORD_FIELDS = frozenset(
    {field.alias or name for name, field in Record.model_fields.items()})
"""The stored names of the base Record's fields (the ledger's; a subclass's others are outputs)."""

Enqueue = Callable[[list[Claim]], object]
"""Sends claims as sampling messages (:func:`agentrl.celery_app.enqueue_claims`)."""


# --- names and rules -----------------------------------------------------------------------------


class RedisKeys:
    """Every Redis key of a run, under its ``key_prefix``.

    ``<p>:ledger:{leases,owners,claims}`` — trajectory leases (:class:`OwnedSet`);
    ``<p>:ledger:task_locks:*`` — one-at-a-time locks of stateful tasks;
    ``<p>:ledger:alive`` — set while Redis holds the run's ledger state (its absence means Redis
    lost it); ``<p>:counter:global_step`` — cache of :class:`GlobalStep`;
    ``<p>:lock:<name>`` — :class:`~agentrl.databases.DistributedLock` names;
    ``<p>:service:<id>:requests`` — requests running on an inference service (slots);
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
        """The sorted set of requests running on service ``service_id`` (member → expiry)."""
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


def _outcome_update(traj_id: int, score: float | None, failed: ErrorKind | None) -> dict:
    """The task update that records one trajectory's outcome (idempotent)."""
    key = str(traj_id)
    if failed is None:
        return {"$set": {f"scores.{key}": float(score or 0.0), "updated_at": utcnow()},
                "$unset": {f"failed.{key}": ""}}
    return {"$set": {f"failed.{key}": failed.value, "updated_at": utcnow()},
            "$unset": {f"scores.{key}": ""}}


# --- the worker side (async) -----------------------------------------------------------------


class TrajectoryLedger:
    """The worker side of the ledger: leases, attempts, calls and outcomes (asyncio).

    Args:
        config: the run configuration.
        store: async MongoDB access.
        redis: asyncio Redis client (``decode_responses=True``).
        objects: the object store (large outputs).
        enqueue: sends claims back to the broker at once (a retry, a shutdown); ``None`` leaves
            them to housekeeping (due immediately).

    Create it inside the event loop that uses it; :meth:`aclose` releases what it holds.
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        store: AsyncMongoStore,
        redis: aioredis.Redis,
        objects: ObjectStore,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.config, self.store, self.redis, self.objects = config, store, redis, objects
        self.enqueue = enqueue
        self.keys = RedisKeys(config.key_prefix)
        self.leases = LeaseKeeper(redis, config.lease_ttl_s, config.heartbeat_interval_s,
                                  on_lost=self._on_lost)
        self.writes = WriteBuffer(store, config.call_log_linger_s, config.mongo_outage_timeout_s)
        self.worker = worker_name()
        self._live: dict[str, Attempt] = {}
        self._lost_callbacks: dict[str, Callable[[], None]] = {}

    # --- MongoDB with outages waited out ---------------------------------------------------------

    async def _mongo(self, op: Callable[[], Any]) -> Any:
        """Run a MongoDB operation, retrying connection failures for
        ``mongo_outage_timeout_s`` (a restart of the server is waited out)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ConnectionFailure),
            stop=stop_after_delay(self.config.mongo_outage_timeout_s),
            wait=wait_exponential(multiplier=0.2, max=5.0), reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await op()
        raise AssertionError("unreachable")  # pragma: no cover

    # --- leases ----------------------------------------------------------------------------------

    async def acquire(self, claim: Claim) -> bool:
        """Take the trajectory's lease (with the claim that restarts it). False: a live
        attempt elsewhere holds it."""
        return await self.leases.acquire(
            self.keys.trajectories, claim.record_id, json.dumps(claim.to_json()))

    def holds(self, claim: Claim) -> bool:
        """Whether this process holds the trajectory's lease."""
        return self.leases.holds(self.keys.trajectories, claim.record_id)

    async def release(self, claim: Claim, due_in_s: float | None = None) -> None:
        """Give the lease up; with ``due_in_s`` the claim stays for housekeeping to re-send."""
        self._live.pop(claim.record_id, None)
        self._lost_callbacks.pop(claim.record_id, None)
        await self.leases.release(self.keys.trajectories, claim.record_id, due_in_s)

    def on_lost(self, record_id: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` if a heartbeat finds the trajectory's lease taken over."""
        self._lost_callbacks[record_id] = callback

    def _on_lost(self, owned: OwnedSet, member: str) -> None:
        attempt = self._live.get(member)
        if attempt is not None:
            attempt.lost = True
        callback = self._lost_callbacks.pop(member, None)
        if callback is not None:
            callback()

    async def resend(self, claim: Claim, due_in_s: float = 0.0) -> None:
        """Hand the claim back: left in Redis with no owner, due for housekeeping in
        ``due_in_s`` seconds; when nothing has to wait and the ledger can enqueue, it is also
        sent at once (housekeeping's copy, due after ``lease_ttl_s``, is then only the fallback:
        whichever copy comes second finds the trajectory leased or finished)."""
        now = due_in_s <= 0 and self.enqueue is not None
        await self.release(claim, due_in_s=self.config.lease_ttl_s if now else due_in_s)
        if now:
            try:
                await asyncio.to_thread(self.enqueue, [claim])
            except Exception:  # noqa: BLE001 - the broker may be down: housekeeping re-sends
                log.warning("could not re-send %s; housekeeping will", claim.record_id,
                            exc_info=True)

    # --- tasks -----------------------------------------------------------------------------------

    async def load_task(self, task_id: str) -> dict[str, Any] | None:
        """Mark a task RUNNING (if it was CREATED) and return its stored document."""
        coll = self.store.collection(Task)
        raw = await self._mongo(lambda: coll.find_one_and_update(
            {"_id": task_id, "status": TaskStatus.CREATED.value},
            {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        ))
        if raw is None:
            raw = await self._mongo(lambda: coll.find_one({"_id": task_id}))
        return raw

    async def lock_task(self, task_id: str, poll_s: float) -> None:
        """Wait for, then take, the one-at-a-time lock of a stateful task."""
        while not await self.leases.acquire(self.keys.task_locks, task_id):
            await asyncio.sleep(poll_s)

    async def unlock_task(self, task_id: str) -> None:
        """Release a stateful task's lock."""
        await self.leases.release(self.keys.task_locks, task_id)

    async def load_task_fresh(self, task_id: str) -> dict[str, Any] | None:
        """A stateful task's document as stored now, marked RUNNING unless completed."""
        coll = self.store.collection(Task)
        raw = await self._mongo(lambda: coll.find_one_and_update(
            {"_id": task_id, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        ))
        return raw if raw is not None else await self._mongo(
            lambda: coll.find_one({"_id": task_id}))

    async def save_task_state(self, task_id: str, state: dict[str, Any]) -> None:
        """Store a stateful task's ``state`` and mark it WAITING (unless completed)."""
        plain = to_storable(state, record_id=task_id, path="state",
                            threshold_bytes=self.config.externalize_threshold_bytes,
                            objects=self.objects)
        coll = self.store.collection(Task)
        await self._mongo(lambda: coll.update_one(
            {"_id": task_id, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"$set": {"state": plain, "status": TaskStatus.WAITING.value,
                      "updated_at": utcnow()}},
        ))

    async def unsampled_claims(self, split: str, limit: int = 256) -> list[Claim]:
        """Claims of ``split`` whose Record waits to be started (``created``), oldest first."""
        coll = self.store.collection(Record)
        cursor = coll.find(
            {"split": split, "status": RecordStatus.CREATED.value},
            {"task_id": 1, "traj_id": 1, "epoch": 1, "split": 1, "sampler": 1, "model": 1,
             "resample": 1},
        ).sort([("epoch", 1), ("task_id", 1), ("traj_id", 1)]).limit(limit)
        return [claim_of(raw) async for raw in cursor]

    # --- attempts --------------------------------------------------------------------------------

    async def start(
        self, claim: Claim, record_class: type[Record], global_step: int
    ) -> Attempt:
        """Start the next attempt of a leased trajectory: ``attempt += 1``, ``running``.

        Args:
            claim: the trajectory (its lease must be held).
            record_class: the sampler's Record class (what the Record loads back as).
            global_step: the trainer's step now (``created_at_step``).

        Returns:
            The attempt, whose :attr:`Attempt.record` the sampler fills.

        Raises:
            TrajectoryFinishedError: the Record is final (its outcome was made sure to reach
                the group), or this start exhausted the attempts (the Record is now FAILED).
            ForeignClaimError: the run's database holds no such Record (a message of another
                run): nothing was written.
        """
        record_id, now = claim.record_id, utcnow()
        started = {
            "status": RecordStatus.RUNNING.value, "started_at": now, "updated_at": now,
            "worker": self.worker, "created_at_step": int(global_step), "finished_at": None,
            "meta": {}, "score": None, "token_exact": None, "_type": record_class.__name__,
        }
        coll = self.store.collection(Record)
        doc = await self._mongo(lambda: coll.find_one_and_update(
            {"_id": record_id, "status": {"$nin": sorted(FINAL_RECORD_STATUSES)}},
            {"$inc": {"attempt": 1}, "$set": started},
            return_document=ReturnDocument.AFTER,
        ))
        if doc is None:
            final = await self._mongo(lambda: coll.find_one({"_id": record_id}))
            await self.release(claim)
            if final is None:  # open_claims makes every Record before its message
                raise ForeignClaimError(record_id)
            await self._settle(final)
            raise TrajectoryFinishedError(record_id, str(final.get("status")))
        attempt = Attempt(self, claim, int(doc["attempt"]), record_class.from_mongo(doc))
        if attempt.number > 1:
            await attempt.supersede_earlier(doc)
        charged = attempt.number - int(doc.get("infrastructure_failures") or 0)
        hard_cap = self.config.max_sample_attempts + self.config.max_infrastructure_retries
        if charged > self.config.max_sample_attempts or attempt.number > hard_cap:
            kind = ErrorKind(doc.get("error_kind") or ErrorKind.INFRASTRUCTURE.value)
            reason = (f"gave up after {attempt.number - 1} attempts; last: "
                      f"{doc.get('error') or 'the worker was lost'}")
            await attempt.finalize_failed(kind, reason)
            raise TrajectoryFinishedError(record_id, RecordStatus.FAILED.value)
        self._live[record_id] = attempt
        return attempt

    async def _settle(self, record: dict[str, Any]) -> None:
        """Make sure a final Record's outcome is in its task and its group completed (the
        attempt that finished it may have died in between)."""
        status = record.get("status")
        if status not in (RecordStatus.SCORED.value, RecordStatus.FAILED.value):
            return
        failed = ErrorKind(record.get("error_kind") or ErrorKind.SAMPLER.value) if (
            status == RecordStatus.FAILED.value) else None
        await self.push_outcome(record["task_id"], int(record["traj_id"]),
                                score=record.get("score"), failed=failed)

    async def push_outcome(
        self, task_id: str, traj_id: int, *, score: float | None = None,
        failed: ErrorKind | None = None,
    ) -> RecordStatus | None:
        """Set one trajectory's outcome in its task; the group's last one completes it.

        Returns:
            The group's status once complete (``READY`` / ``ABANDONED``), else ``None``.
        """
        coll = self.store.collection(Task)
        task = await self._mongo(lambda: coll.find_one_and_update(
            {"_id": task_id}, _outcome_update(traj_id, score, failed),
            return_document=ReturnDocument.AFTER,
        ))
        if task is None:
            return None
        return await self.complete_group(task)

    async def complete_group(self, task: dict[str, Any]) -> RecordStatus | None:
        """Mark a complete group's scored Records READY/ABANDONED and its task COMPLETED."""
        status = group_outcome(task)
        if status is None:
            return None
        now = utcnow()
        records, tasks = self.store.collection(Record), self.store.collection(Task)
        await self._mongo(lambda: records.update_many(
            {"task_id": task["_id"], "epoch": task.get("epoch", 0),
             "status": RecordStatus.SCORED.value},
            {"$set": {"status": status.value, "updated_at": now}},
        ))
        if task.get("status") != TaskStatus.COMPLETED.value:
            await self._mongo(lambda: tasks.update_one(
                {"_id": task["_id"]},
                {"$set": {"status": TaskStatus.COMPLETED.value, "updated_at": now}}))
        return status

    async def aclose(self) -> None:
        """Write the buffered calls and release every lease still held."""
        with contextlib.suppress(Exception):
            await self.writes.aclose()
        await self.leases.aclose()


def claim_of(raw: dict[str, Any]) -> Claim:
    """The claim of a stored Record (its identity and how it is sampled)."""
    return Claim(
        task_id=str(raw["task_id"]), traj_id=int(raw["traj_id"]), epoch=int(raw["epoch"]),
        split=str(raw.get("split", "train")), sampler=str(raw.get("sampler") or ""),
        model=str(raw.get("model") or ""), resample=bool(raw.get("resample", True)),
    )


@dataclass
class Attempt:
    """One start of a trajectory: the handle its sampler and the router write through.

    Attributes:
        ledger: the process's ledger.
        claim: the trajectory.
        number: this attempt's number (every write is conditioned on it).
        record: the Record the sampler fills (``meta``); written by :meth:`complete`.
        lost: set when a heartbeat found the lease taken over (the copy must stop).
    """

    ledger: TrajectoryLedger
    claim: Claim
    number: int
    record: Record
    lost: bool = False
    calls: dict[int, DispatchedSamplingTask] = field(default_factory=dict)
    _turn: int = 0
    _pending: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def record_id(self) -> str:
        """The Record identity."""
        return self.claim.record_id

    @property
    def task_id(self) -> str:
        """The Record's task."""
        return self.claim.task_id

    def check_lease(self) -> None:
        """Raise :class:`LeaseLostError` once a newer attempt holds the trajectory."""
        if self.lost:
            raise LeaseLostError(self.record_id, self.number, "the lease was taken over")

    def next_turn(self) -> int:
        """The index of the attempt's next LLM call (0, 1, ...)."""
        turn, self._turn = self._turn, self._turn + 1
        return turn

    def log_call(self, call: DispatchedSamplingTask) -> None:
        """Write (or rewrite) one of the attempt's calls through the write buffer."""
        call.attempt = self.number
        self.calls[call.turn] = call
        self._pending.append(self.ledger.writes.upsert(call))

    def annotate_call(self, turn: int, **meta: Any) -> None:
        """Add ``meta`` to the stored call of ``turn`` (e.g. what a tool or action did)."""
        call = self.calls.get(turn)
        if call is None:
            raise KeyError(f"attempt {self.number} of {self.record_id} has no call {turn}")
        call.meta.update(meta)
        call.updated_at = utcnow()
        self._pending.append(self.ledger.writes.upsert(call))

    async def calls_stored(self) -> None:
        """Wait until every call written so far is stored."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def supersede_earlier(self, doc: dict[str, Any]) -> None:
        """On a restart: calls of earlier attempts are cancelled (unfinished) or dropped
        (finished, never trained), and a previous attempt that never reported is recorded as
        lost (an infrastructure failure that is charged: the worker may be what the
        trajectory kills)."""
        calls = self.ledger.store.collection(DispatchedSamplingTask)
        earlier = {"record_id": self.record_id, "attempt": {"$lt": self.number}}
        now = utcnow()
        for statuses, new in (
            ([DispatchStatus.PENDING.value, DispatchStatus.RUNNING.value],
             DispatchStatus.CANCELLED),
            ([DispatchStatus.COMPLETED.value], DispatchStatus.DROPPED),
        ):
            await self.ledger._mongo(lambda s=statuses, n=new: calls.update_many(
                {**earlier, "status": {"$in": s}},
                {"$set": {"status": n.value, "updated_at": now}}))
        if int(doc.get("failed_attempt") or 0) != self.number - 1:
            reason = (f"attempt {self.number - 1} was lost: its worker stopped (killed, or "
                      f"frozen past lease_ttl_s) before it ended")
            log.warning("trajectory %s: %s", self.record_id, reason)
            doc["error"], doc["error_kind"] = reason, ErrorKind.INFRASTRUCTURE.value
            await self._write({"error": reason, "error_kind": ErrorKind.INFRASTRUCTURE.value,
                               "failed_attempt": self.number - 1})

    async def _write(self, fields: dict[str, Any], inc: dict[str, int] | None = None) -> None:
        """``$set`` fields on the Record, conditioned on this attempt.

        Raises:
            LeaseLostError: a newer attempt holds the Record (nothing was written).
        """
        coll = self.ledger.store.collection(Record)
        update: dict[str, Any] = {"$set": {**fields, "updated_at": utcnow()}}
        if inc:
            update["$inc"] = inc
        result = await self.ledger._mongo(lambda: coll.update_one(
            {"_id": self.record_id, "attempt": self.number}, update))
        if result.matched_count == 0:
            self.lost = True
            raise LeaseLostError(self.record_id, self.number, "a newer attempt started")

    def _outputs(self) -> dict[str, Any]:
        """The sampler's outputs as they can be stored (the boundary check): ``meta`` and the
        fields a Record subclass adds."""
        doc = self.record.model_dump(by_alias=True, mode="python")
        own = {k: v for k, v in doc.items() if k not in _RECORD_FIELDS}
        own["meta"] = self.record.meta
        outputs = {
            key: to_storable(value, record_id=self.record_id, path=key,
                             threshold_bytes=self.ledger.config.externalize_threshold_bytes,
                             objects=self.ledger.objects)
            for key, value in own.items()
        }
        return {**outputs, "token_exact": self.token_exact}

    @property
    def token_exact(self) -> bool | None:
        """Whether every completed call returned the engine's ids (``None``: no call)."""
        calls = list(self.calls.values())
        if not any(c.status == DispatchStatus.COMPLETED for c in calls):
            return None
        return is_token_exact(calls)

    @contextlib.asynccontextmanager
    async def scoring(self) -> AsyncIterator[None]:
        """Wrap ``evaluate_record``: if it runs longer than ``status_write_linger_s``, the
        Record is stored ``scoring`` with its outputs meanwhile."""

        async def later() -> None:
            await asyncio.sleep(self.ledger.config.status_write_linger_s)
            outputs = await asyncio.to_thread(self._outputs)
            await self._write({"status": RecordStatus.SCORING.value, **outputs})

        self.record.status = RecordStatus.SCORING
        timer = asyncio.ensure_future(later())
        try:
            yield
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await timer

    async def complete(self, score: float) -> RecordStatus | None:
        """Store the scored Record and its outcome in the group; release the lease.

        Returns:
            The group's status when this completed it, else ``None``.

        Raises:
            InvalidOutputError: the outputs cannot be stored (the caller fails the attempt).
            LeaseLostError: a newer attempt holds the trajectory (nothing was stored).
        """
        await self.calls_stored()
        outputs = await asyncio.to_thread(self._outputs)
        record = self.record
        record.score, record.status = float(score), RecordStatus.SCORED
        fields = {"status": RecordStatus.SCORED.value, "score": float(score), "error": None,
                  "error_kind": None, "finished_at": utcnow(), **outputs}
        check_document_size({**record.to_mongo(), **fields}, self.record_id)
        await self._write(fields)
        status = await self.ledger.push_outcome(self.task_id, self.claim.traj_id,
                                                score=float(score))
        await self.ledger.release(self.claim)
        return status

    async def fail(self, exc: BaseException) -> bool:
        """Record a failed attempt and decide what follows (see the module docstring).

        Returns:
            True when the trajectory will be started again, False when it is FAILED.

        Raises:
            LeaseLostError: a newer attempt holds the trajectory (nothing was stored).
        """
        config = self.ledger.config
        kind = classify_failure(exc)
        message = f"{type(exc).__name__}: {exc}"
        self.record.error, self.record.error_kind = message, kind
        with contextlib.suppress(Exception):
            await self.calls_stored()
        infra = int(self.record.infrastructure_failures) + (kind == ErrorKind.INFRASTRUCTURE)
        charged = self.number - infra
        if kind == ErrorKind.INFRASTRUCTURE:
            retry = self.number < config.max_sample_attempts + config.max_infrastructure_retries
            due_s = infrastructure_backoff_s(infra, config.infrastructure_retry_backoff_s)
        else:
            retry = (config.resample_error_records and self.claim.resample
                     and charged < config.max_sample_attempts)
            due_s = 0.0
        log.log(logging.WARNING if retry else logging.ERROR,
                "trajectory %s attempt %d failed (%s)%s: %s", self.record_id, self.number,
                kind.value, f"; retrying in {due_s:.0f} s" if retry else "; giving up", message,
                exc_info=exc if kind == ErrorKind.SAMPLER else None)
        if not retry:
            await self.finalize_failed(kind, message,
                                       infra_inc=int(kind == ErrorKind.INFRASTRUCTURE))
            return False
        await self._write(
            {"status": RecordStatus.CREATED.value, "error": message, "error_kind": kind.value,
             "failed_attempt": self.number},
            inc={"infrastructure_failures": 1} if kind == ErrorKind.INFRASTRUCTURE else None)
        self.record.status = RecordStatus.CREATED
        await self.ledger.resend(self.claim, due_s)
        return True

    async def hand_back(self, reason: str) -> None:
        """The worker stops before the attempt ended (shutdown, cancellation): the Record goes
        back to ``created`` as an uncharged infrastructure failure and the claim is re-sent at
        once."""
        if self.lost:
            await self.ledger.release(self.claim)
            return
        with contextlib.suppress(Exception):
            await self.calls_stored()
        try:
            await self._write(
                {"status": RecordStatus.CREATED.value, "error": reason,
                 "error_kind": ErrorKind.INFRASTRUCTURE.value, "failed_attempt": self.number},
                inc={"infrastructure_failures": 1})
        except LeaseLostError:
            await self.ledger.release(self.claim)
            return
        await self.ledger.resend(self.claim, 0.0)

    async def finalize_failed(self, kind: ErrorKind, reason: str, infra_inc: int = 0) -> None:
        """Store the Record FAILED (it leaves its group), complete the group, release."""
        outputs: dict[str, Any] = {}
        with contextlib.suppress(InvalidOutputError):
            outputs = await asyncio.to_thread(self._outputs)
        await self._write(
            {"status": RecordStatus.FAILED.value, "error": reason, "error_kind": kind.value,
             "failed_attempt": self.number, "finished_at": utcnow(), **outputs},
            inc={"infrastructure_failures": infra_inc} if infra_inc else None)
        self.record.status = RecordStatus.FAILED
        await self.ledger.push_outcome(self.task_id, self.claim.traj_id, failed=kind)
        await self.ledger.release(self.claim)


# --- the run side (sync: beat, schedulers, the trainer) ------------------------------------------


class GlobalStep:
    """The trainer's global step: stored in the run state (MongoDB), cached in Redis.

    Args:
        dbs: sync connections of the run.
    """

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.key = RedisKeys(dbs.config.key_prefix).global_step
        self.runs = dbs.store.collection(RunState)

    def get(self) -> int:
        """The current step (0 before the first); a Redis miss reloads it from MongoDB."""
        cached = self.dbs.redis.get(self.key)
        if cached is not None:
            return int(cached)
        raw = self.runs.find_one({"_id": RUN_STATE_ID}, {"global_step": 1})
        value = int((raw or {}).get("global_step") or 0)
        self.dbs.redis.set(self.key, value, nx=True)
        return value

    def set(self, value: int) -> None:
        """Set the step (a fresh run, a resume from a checkpoint)."""
        self.runs.update_one({"_id": RUN_STATE_ID},
                             {"$set": {"global_step": int(value), "updated_at": utcnow()},
                              "$setOnInsert": {"_type": RunState.__name__,
                                               "created_at": utcnow(), "pushed_epochs": {}}},
                             upsert=True)
        self.dbs.redis.set(self.key, int(value))

    def incr(self) -> int:
        """Add one step (after a published optimizer step) and return the new value."""
        raw = self.runs.find_one_and_update(
            {"_id": RUN_STATE_ID},
            {"$inc": {"global_step": 1}, "$set": {"updated_at": utcnow()},
             "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                              "pushed_epochs": {}}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        value = int(raw["global_step"])
        self.dbs.redis.set(self.key, value)
        return value


def pushed_epoch(dbs: Databases, split: str) -> int:
    """The last epoch of ``split`` whose claims were all sent (0 when none)."""
    raw = dbs.store.collection(RunState).find_one({"_id": RUN_STATE_ID}, {"pushed_epochs": 1})
    return int(((raw or {}).get("pushed_epochs") or {}).get(split, 0))


def set_pushed_epoch(dbs: Databases, split: str, epoch: int) -> None:
    """Record that every claim of ``split``/``epoch`` was sent."""
    dbs.store.collection(RunState).update_one(
        {"_id": RUN_STATE_ID},
        {"$set": {f"pushed_epochs.{split}": int(epoch), "updated_at": utcnow()},
         "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                          "global_step": 0}},
        upsert=True,
    )


def open_claims(dbs: Databases, claims: list[Claim], enqueue: Enqueue) -> int:
    """Insert a ``created`` Record per claim (existing ones are kept) and send the claims.

    Returns:
        The number of messages sent.
    """
    if not claims:
        return 0
    now = utcnow()
    dbs.store.insert_many([
        Record(id=c.record_id, task_id=c.task_id, traj_id=c.traj_id, epoch=c.epoch,
               split=c.split, sampler=c.sampler, model=c.model, resample=c.resample,
               status=RecordStatus.CREATED, created_at=now, updated_at=now)
        for c in claims
    ])
    dbs.redis.set(RedisKeys(dbs.config.key_prefix).alive, "1")
    enqueue(claims)
    return len(claims)


@dataclass
class Housekeeping:
    """What one :func:`housekeep` pass did.

    Attributes:
        resent: claims re-sent (lapsed leases, due retries).
        rebuilt: claims rebuilt from MongoDB after Redis came back empty.
        groups_completed: groups completed whose last member died after scoring.
    """

    resent: int = 0
    rebuilt: int = 0
    groups_completed: int = 0


_redis_lost_since: dict[str, float] = {}


def housekeep(dbs: Databases, enqueue: Enqueue, complete_groups: bool = True) -> Housekeeping:
    """One pass of the ledger's housekeeping (beat runs it every ``housekeeping_interval_s``).

    1. lapsed leases and due retries are re-sent (work ∝ what expired);
    2. when Redis lost the run's state (no ``alive`` marker while epochs are unfinished), the
       claims of unfinished tasks whose Record is not final and not held are rebuilt from
       MongoDB and re-sent — after ``REBUILD_GRACE_FACTOR`` heartbeats, so that running
       workers first retake their leases;
    3. groups whose every trajectory has an outcome but that are not completed are completed.
    """
    keys = RedisKeys(dbs.config.key_prefix)
    done = Housekeeping()
    payloads = take_expired(dbs.redis, keys.trajectories)
    claims = [Claim.from_json(json.loads(p)) for p in payloads]
    if claims:
        log.warning("re-sending %d claims (lapsed leases or due retries)", len(claims))
        enqueue(claims)
        done.resent = len(claims)
    if not dbs.redis.exists(keys.alive):
        done.rebuilt = _rebuild_after_redis_loss(dbs, keys, enqueue)
    if complete_groups:
        done.groups_completed = complete_stuck_groups(dbs)
    return done


def _unfinished_tasks(dbs: Databases) -> list[dict[str, Any]]:
    return list(dbs.store.collection(Task).find(
        {"status": {"$ne": TaskStatus.COMPLETED.value}},
        {"num_generations": 1, "scores": 1, "failed": 1, "split": 1, "epoch": 1, "sampler": 1,
         "status": 1}))


def _rebuild_after_redis_loss(dbs: Databases, keys: RedisKeys, enqueue: Enqueue) -> int:
    """Re-send the claims Redis lost (see :func:`housekeep`). Returns how many."""
    if not _unfinished_tasks(dbs):
        dbs.redis.set(keys.alive, "1")
        return 0
    first_seen = _redis_lost_since.setdefault(keys.prefix, time.monotonic())
    if time.monotonic() - first_seen < REBUILD_GRACE_FACTOR * dbs.config.heartbeat_interval_s:
        return 0
    log.warning("Redis lost the run's ledger state: rebuilding the claims from MongoDB")
    sent = resend_unfinished(dbs, enqueue)
    _redis_lost_since.pop(keys.prefix, None)
    return sent


def resend_unfinished(dbs: Databases, enqueue: Enqueue) -> int:
    """Send again every claim of an unfinished task whose Record is not final and not held by
    a live lease (a run resumed after its queues were emptied, Redis lost them...).

    Returns:
        The number of claims sent.
    """
    keys = RedisKeys(dbs.config.key_prefix)
    tasks = _unfinished_tasks(dbs)
    held = owned_members(dbs.redis, keys.trajectories)
    ids = [t["_id"] for t in tasks]
    records = {r["_id"]: r for r in dbs.store.collection(Record).find(
        {"task_id": {"$in": ids}},
        {"task_id": 1, "traj_id": 1, "epoch": 1, "split": 1, "sampler": 1, "model": 1,
         "resample": 1, "status": 1})} if ids else {}
    claims: list[Claim] = []
    missing: list[Claim] = []
    for task in tasks:
        epoch = int(task.get("epoch", 0))
        for traj_id in range(int(task.get("num_generations", 1))):
            record_id = Record.identity_id(task["_id"], traj_id, epoch)
            raw = records.get(record_id)
            if raw is None:
                missing.append(Claim(task["_id"], traj_id, epoch, str(task.get("split", "train")),
                                     str(task.get("sampler") or "")))
            elif raw.get("status") not in FINAL_RECORD_STATUSES and record_id not in held:
                claims.append(claim_of(raw))
    if claims:
        enqueue(claims)
    open_claims(dbs, missing, enqueue)
    dbs.redis.set(keys.alive, "1")
    if claims or missing:
        log.info("re-sent %d claims of unfinished tasks", len(claims) + len(missing))
    return len(claims) + len(missing)


def training_finished(dbs: Databases) -> bool:
    """Whether the trainer of the run is done (no more train epochs are pushed)."""
    raw = dbs.store.collection(RunState).find_one({"_id": RUN_STATE_ID}, {"training_finished": 1})
    return bool((raw or {}).get("training_finished"))


def set_training_finished(dbs: Databases, finished: bool) -> None:
    """Record that the trainer is done (``True``) or training again (``False``)."""
    dbs.store.collection(RunState).update_one(
        {"_id": RUN_STATE_ID},
        {"$set": {"training_finished": bool(finished), "updated_at": utcnow()},
         "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                          "global_step": 0, "pushed_epochs": {}}},
        upsert=True,
    )


def complete_stuck_groups(dbs: Databases) -> int:
    """Complete the groups whose every trajectory has an outcome but whose task is not
    COMPLETED (the last member died between its score and the group). Returns how many."""
    completed = 0
    for task in _unfinished_tasks(dbs):
        status = group_outcome(task)
        if status is None:
            continue
        dbs.store.collection(Record).update_many(
            {"task_id": task["_id"], "epoch": task.get("epoch", 0),
             "status": RecordStatus.SCORED.value},
            {"$set": {"status": status.value, "updated_at": utcnow()}})
        dbs.store.collection(Task).update_one(
            {"_id": task["_id"]},
            {"$set": {"status": TaskStatus.COMPLETED.value, "updated_at": utcnow()}})
        completed += 1
    return completed


def failures_by_kind(dbs: Databases, split: str | None = None) -> dict[str, int]:
    """FAILED Records per error kind (``agentrl status``)."""
    match: dict[str, Any] = {"status": RecordStatus.FAILED.value}
    if split is not None:
        match["split"] = split
    counts = {kind.value: 0 for kind in ErrorKind}
    for row in dbs.store.collection(Record).aggregate([
        {"$match": match}, {"$group": {"_id": "$error_kind", "n": {"$sum": 1}}},
    ]):
        counts[str(row["_id"])] = int(row["n"])
    return counts


def clear_run_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every Redis key of the run ``prefix`` (``agentrl run --fresh``). Returns how many."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)
