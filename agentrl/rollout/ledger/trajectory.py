"""The worker side of the ledger: :class:`TrajectoryLedger` (leases, attempts, outcomes, on one
process's event loop) and :class:`Attempt` (one start of a trajectory, the handle its sampler and
the router write through)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    FINAL_RECORD_STATUSES,
    AsyncMongoStore,
    DispatchedSamplingTask,
    DispatchStatus,
    ErrorKind,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
    calls_token_exact,
    utcnow,
)
from agentrl.databases.objectstore import ObjectStore
from agentrl.errors import (
    ForeignClaimError,
    InvalidOutputError,
    LeaseLostError,
    TrajectoryFinishedError,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.leases import LeaseKeeper, OwnedSet
from agentrl.rollout.ledger.rules import (
    RECORD_FIELDS,
    Enqueue,
    RedisKeys,
    claim_of,
    classify_failure,
    group_outcome,
    infrastructure_backoff_s,
    outcome_update,
    scored_members,
    worker_name,
)
from agentrl.rollout.storable import check_document_size, to_storable
from agentrl.rollout.writes import WriteBuffer

log = logging.getLogger(__name__)


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

    async def waiting_out_outages(self, op: Callable[[], Any]) -> Any:
        """Run a MongoDB operation, retrying connection failures for
        ``mongo_outage_timeout_s`` (a restart of the server is waited out).

        The first try runs outside tenacity: this is every ledger write of every trajectory,
        and setting up a retry loop costs ~40 µs of CPU per call that almost never retries."""
        try:
            return await op()
        except ConnectionFailure:
            pass
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
        raw = await self.waiting_out_outages(lambda: coll.find_one_and_update(
            {"_id": task_id, "status": TaskStatus.CREATED.value},
            {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        ))
        if raw is None:
            raw = await self.waiting_out_outages(lambda: coll.find_one({"_id": task_id}))
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
        raw = await self.waiting_out_outages(lambda: coll.find_one_and_update(
            {"_id": task_id, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        ))
        return raw if raw is not None else await self.waiting_out_outages(
            lambda: coll.find_one({"_id": task_id}))

    async def save_task_state(self, task_id: str, state: dict[str, Any]) -> None:
        """Store a stateful task's ``state`` and mark it WAITING (unless completed)."""
        plain = to_storable(state, record_id=task_id, path="state",
                            threshold_bytes=self.config.externalize_threshold_bytes,
                            objects=self.objects)
        coll = self.store.collection(Task)
        await self.waiting_out_outages(lambda: coll.update_one(
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
        doc = await self.waiting_out_outages(lambda: coll.find_one_and_update(
            {"_id": record_id, "status": {"$nin": sorted(FINAL_RECORD_STATUSES)}},
            {"$inc": {"attempt": 1}, "$set": started},
            return_document=ReturnDocument.AFTER,
        ))
        if doc is None:
            final = await self.waiting_out_outages(lambda: coll.find_one({"_id": record_id}))
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
        task = await self.waiting_out_outages(lambda: coll.find_one_and_update(
            {"_id": task_id}, outcome_update(traj_id, score, failed),
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
        await self.waiting_out_outages(lambda: records.update_many(
            scored_members(task), {"$set": {"status": status.value, "updated_at": now}},
        ))
        if task.get("status") != TaskStatus.COMPLETED.value:
            await self.waiting_out_outages(lambda: tasks.update_one(
                {"_id": task["_id"]},
                {"$set": {"status": TaskStatus.COMPLETED.value, "updated_at": now}}))
        return status

    async def aclose(self) -> None:
        """Write the buffered calls and release every lease still held."""
        with contextlib.suppress(Exception):
            await self.writes.aclose()
        await self.leases.aclose()


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
            await self.ledger.waiting_out_outages(lambda s=statuses, n=new: calls.update_many(
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
        result = await self.ledger.waiting_out_outages(lambda: coll.update_one(
            {"_id": self.record_id, "attempt": self.number}, update))
        if result.matched_count == 0:
            self.lost = True
            raise LeaseLostError(self.record_id, self.number, "a newer attempt started")

    def _outputs(self) -> dict[str, Any]:
        """The sampler's outputs as they can be stored (the boundary check): ``meta`` and the
        fields a Record subclass adds."""
        doc = self.record.model_dump(by_alias=True, mode="python")
        own = {k: v for k, v in doc.items() if k not in RECORD_FIELDS}
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
        return calls_token_exact(calls)

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
