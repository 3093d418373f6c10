"""`AsyncSampler` and `StatefulSampler`: the AgentRL guide's sampling API.

Subclass :class:`AsyncSampler`, write ``async def run(self)`` (the trajectory: LLM calls through
``await self.create_chat_completions(messages, tools=None, **kw)``) and
``async def evaluate_record(self, record) -> float``, then::

    async with MySampler(cfg) as sampler:   # claims a trajectory, creates its Record
        await sampler.run()                 # on exit: scored, pushed into the task, group READY

Entering claims a trajectory — the one a sampling message names (``claim=``), or any unsampled
one of ``split`` — under a lease (:mod:`agentrl.rollout.leases`), or raises
:class:`~agentrl.errors.NoTaskAvailableError` (its leaves :class:`TrajectoryLeasedError` for a
copy whose first delivery still runs and :class:`TrajectoryFinishedError` for a late
redelivery). Leaving scores the Record with :meth:`evaluate_record` (an exception there scores 0
and is logged), writes it, pushes the score into the task and, when all ``num_generations`` of the
group are scored, marks the group READY (ABANDONED without spread) — see
:mod:`agentrl.rollout.claims`. An exception in ``run`` is logged and kept in :attr:`failed`; with
``resample_error_records`` the claim goes back (beat's housekeeping re-sends it) until
``max_sample_attempts``, after which the trajectory scores 0.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar

import redis.asyncio as aioredis
from pymongo import ReturnDocument

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    AsyncMongoStore,
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
    mongo_uri,
    utcnow,
)
from agentrl.databases.connections import GLOBAL_STEP
from agentrl.errors import (
    NoTaskAvailableError,
    RolloutError,
    TrajectoryFinishedError,
    TrajectoryLeasedError,
)
from agentrl.inference.routing import Router
from agentrl.rollout.claims import (
    FINISHED_RECORD_STATUSES,
    Claim,
    complete_group,
    push_score,
    start_task,
    write_record,
)
from agentrl.rollout.leases import LeaseKeeper
from agentrl.rollout.registry import sampler_name_of

logger = logging.getLogger(__name__)

TASK_CACHE_SIZE = 4096
"""Tasks kept per process, so the ``num_generations`` trajectories of a group load it once."""

REDIS_MAX_CONNECTIONS = 64
"""Redis connections one worker process's event loop opens at most."""

REDIS_POOL_TIMEOUT_S = 60.0
"""Seconds a trajectory waits for a free Redis connection before failing."""

STATEFUL_POLL_S = 0.2
"""Seconds between tries of a stateful task's lock."""


def attempts_key(prefix: str) -> str:
    """Redis hash counting starts per trajectory (record id → attempts)."""
    return f"{prefix}:attempts"


class SamplerContext:
    """Process-wide resources of samplers: MongoDB, Redis, leases, router, a task cache.

    A sampling worker process opens one and passes it to every sampler it runs (many
    trajectories share one event loop); a sampler used on its own opens and closes its own.

    Args:
        config: the run configuration.
        store: async MongoDB store (created in the running event loop).
        redis: asyncio Redis client with ``decode_responses=True``.
    """

    def __init__(
        self, config: AgentTrainingConfig, store: AsyncMongoStore, redis: aioredis.Redis
    ) -> None:
        self.config, self.store, self.redis = config, store, redis
        self.leases = LeaseKeeper(
            redis, config.key_prefix, config.lease_ttl_s, config.heartbeat_interval_s
        )
        self._router: Router | None = None
        self._tasks: collections.OrderedDict[str, asyncio.Future[dict[str, Any] | None]] = (
            collections.OrderedDict())

    @classmethod
    def open(cls, config: AgentTrainingConfig) -> SamplerContext:
        """Connect to MongoDB (the embedded server when no URI is set) and Redis.

        Call from inside the event loop that will use the context.
        """
        store = AsyncMongoStore(mongo_uri(config), config.db_name)
        # a blocking pool waits for a free connection instead of raising when hundreds of
        # trajectories touch Redis at once
        pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url, decode_responses=True, max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_POOL_TIMEOUT_S,
        )
        return cls(config, store, aioredis.Redis(connection_pool=pool))

    async def router(self) -> Router:
        """The shared :class:`~agentrl.inference.routing.Router` (created on first use)."""
        if self._router is None:
            self._router = Router(self.config, self.store, self.redis)
        return self._router

    async def task(self, task_id: str) -> dict[str, Any] | None:
        """The raw task document, marked RUNNING on first load; cached per process.

        Concurrent first loads of one task (the ``num_generations`` trajectories of a group
        start together) share one MongoDB round trip.
        """
        pending = self._tasks.get(task_id)
        if pending is None:
            pending = asyncio.ensure_future(start_task(self.store, task_id))
            self._tasks[task_id] = pending
            while len(self._tasks) > TASK_CACHE_SIZE:
                self._tasks.popitem(last=False)
        try:
            raw = await asyncio.shield(pending)
        except Exception:
            self._tasks.pop(task_id, None)
            raise
        if raw is None:
            self._tasks.pop(task_id, None)
        return raw

    async def global_step(self) -> int:
        """The trainer's global step (Redis counter ``<key_prefix>:counter:global_step``)."""
        value = await self.redis.get(f"{self.config.key_prefix}:counter:{GLOBAL_STEP}")
        return int(value) if value is not None else 0

    async def aclose(self) -> None:
        """Release leases, close the router and the connections."""
        await self.leases.aclose()
        if self._router is not None:
            await self._router.aclose()
        await self.store.close()
        await self.redis.aclose()


class AsyncSampler(ABC):
    """Base of samplers: claim → ``run`` → ``evaluate_record`` → score, as an async context.

    Args:
        config: the run configuration (``self.config``).
        split: the split to claim from when no ``claim`` is given.
        claim: the trajectory to sample (what a sampling message names).
        context: shared process resources; ``None`` opens (and later closes) private ones.

    Inside :meth:`run`: ``self.task`` (the Task, as its registered class), ``self.record`` (the
    Record, written on exit; put outputs in ``self.record.meta``), ``self.config``,
    ``await self.create_chat_completions(...)``.
    """

    sampler_name: ClassVar[str] = ""
    task_class: ClassVar[type[Task]] = Task
    record_class: ClassVar[type[Record]] = Record

    def __init__(
        self,
        config: AgentTrainingConfig,
        *args: Any,
        split: str = "train",
        claim: Claim | None = None,
        context: SamplerContext | None = None,
        **kwargs: Any,
    ) -> None:
        self.config, self.split, self.claim = config, split, claim
        self._context, self._own_context = context, context is None
        self.task: Task | None = None
        self.record: Record | None = None
        self.failed: BaseException | None = None
        self._turn = 0

    @property
    def context(self) -> SamplerContext:
        """The shared resources (available once entered)."""
        if self._context is None:
            raise RuntimeError("enter the sampler with `async with` first")
        return self._context

    # --- the guide's API -------------------------------------------------------------------------

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> Any:
        """The dataset beat pushes for ``split`` (``train_file`` / ``eval_file``).

        Raises:
            RolloutError: this sampler has no file-based dataset (use SamplingScheduler).
        """
        raise RolloutError(
            f"sampler {cls.__name__} defines no load_dataset(config, split); push its dataset "
            "with SamplingScheduler or override load_dataset"
        )

    @abstractmethod
    async def run(self) -> None:
        """Sample one trajectory for ``self.task`` into ``self.record``."""

    @abstractmethod
    async def evaluate_record(self, record: Record) -> float:
        """Score the finished trajectory (a scalar reward)."""

    async def create_chat_completions(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """One LLM call through the router; it logs a DispatchedSamplingTask for this record.

        Args:
            messages: OpenAI chat messages.
            tools: OpenAI tool definitions.
            **kw: sampling parameters (``temperature``, ``max_tokens``, ``model``...).

        Returns:
            The OpenAI-format response dict (token ids and logprobs included).
        """
        router = await self.context.router()
        turn, self._turn = self._turn, self._turn + 1
        return await router.create_chat_completion(
            messages, tools, record=self.record, turn=turn, **kw
        )

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncSampler:
        if self._context is None:
            self._context = SamplerContext.open(self.config)
        try:
            if self.claim is None:
                self.claim = await self._find_claim()
            elif not await self.context.leases.acquire(
                self.claim.record_id, self.claim.to_json()
            ):
                raise TrajectoryLeasedError(self.claim.record_id)
            try:
                await self._start()
            except BaseException:
                await self._release_task()
                await self.context.leases.release(self.claim.record_id)
                raise
        except BaseException:
            await self._close_context()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        claim = self.claim
        if claim is None:  # pragma: no cover - __aenter__ failed
            return False
        keep_claim = False
        try:
            await self._save_task_state()
            if exc is None:
                await self._finish(await self._score(), error=None)
            elif isinstance(exc, Exception):
                self.failed = exc
                keep_claim = await self._fail(exc)
            else:  # cancelled / interrupted: the claim stays inflight for housekeeping
                keep_claim = True
        finally:
            try:
                await self._release_task()
            finally:
                await self.context.leases.release(claim.record_id)
                if keep_claim:
                    await self._restore_inflight(claim)
                await self._close_context()
        return exc is None or isinstance(exc, Exception)

    async def _start(self) -> None:
        claim, ctx = self.claim, self.context
        if claim is None:  # pragma: no cover - set by __aenter__
            raise NoTaskAvailableError("no claim")
        attempt = int(await ctx.redis.hincrby(attempts_key(ctx.config.key_prefix),
                                              claim.record_id, 1))
        if attempt > 1:
            existing = await ctx.store.collection(Record).find_one({"_id": claim.record_id})
            if existing is not None and existing.get("status") in FINISHED_RECORD_STATUSES:
                # the first copy wrote the record and died before (or after) pushing the score
                task = await push_score(ctx.store, claim.task_id, claim.traj_id,
                                        float(existing.get("score") or 0.0))
                if task is not None:
                    await complete_group(ctx.store, task)
                raise TrajectoryFinishedError(claim.record_id, str(existing.get("status")))
            await ctx.store.collection(DispatchedSamplingTask).update_many(
                {"record_id": claim.record_id},
                {"$set": {"status": DispatchStatus.CANCELLED.value, "updated_at": utcnow()}},
            )
        raw = await self._load_task(claim.task_id)
        self.task = Task.from_mongo(raw)
        self.record = self.record_class(
            id=claim.record_id,
            task_id=claim.task_id,
            traj_id=claim.traj_id,
            epoch=claim.epoch,
            split=claim.split,
            status=RecordStatus.RUNNING,
            attempts=attempt,
            created_at_step=await ctx.global_step(),
        )

    async def _score(self) -> float:
        record = self.record
        if record is None:  # pragma: no cover - set by _start
            return 0.0
        record.status = RecordStatus.SCORING
        try:
            return float(await self.evaluate_record(record))
        except Exception as exc:  # noqa: BLE001 - the guide: a failing evaluation scores 0
            logger.exception("evaluate_record failed for record %s; scored 0", record.id)
            record.error = f"evaluate_record: {type(exc).__name__}: {exc}"
            return 0.0

    async def _finish(self, score: float, error: str | None) -> None:
        record, claim, ctx = self.record, self.claim, self.context
        if record is None or claim is None:  # pragma: no cover
            return
        record.score, record.status = score, RecordStatus.SCORED
        if error:
            record.error = error
        await write_record(ctx.store, record)
        task = await push_score(ctx.store, claim.task_id, claim.traj_id, score)
        if task is not None:
            await complete_group(ctx.store, task)

    async def _fail(self, exc: Exception) -> bool:
        """Record a failed run. Returns True when the claim goes back for another attempt."""
        record = self.record
        if record is None:  # pragma: no cover
            return False
        message = f"{type(exc).__name__}: {exc}"
        logger.error("trajectory %s failed (attempt %d): %s", record.id, record.attempts, message,
                     exc_info=exc)
        if self.config.resample_error_records and record.attempts < self.config.max_sample_attempts:
            record.status, record.error = RecordStatus.FAILED, message
            await write_record(self.context.store, record)
            return True
        await self._finish(0.0, error=message)
        return False

    async def _restore_inflight(self, claim: Claim) -> None:
        """Leave the claim in the inflight hash with no lease: housekeeping re-sends it."""
        ctx = self.context
        await ctx.redis.hset(f"{ctx.config.key_prefix}:inflight", claim.record_id,
                             json.dumps(claim.to_json()))

    async def _find_claim(self) -> Claim:
        """Claim any unsampled trajectory of ``self.split`` (used without a message).

        Raises:
            NoTaskAvailableError: every trajectory of the split is scored or leased.
        """
        ctx = self.context
        name = sampler_name_of(type(self))
        cursor = ctx.store.collection(Task).find(
            {"split": self.split, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"_id": 1, "epoch": 1, "num_generations": 1, "scores": 1},
        ).sort([("epoch", 1), ("index", 1)]).limit(256)
        async for raw in cursor:
            done = set((raw.get("scores") or {}).keys())
            for traj_id in range(int(raw.get("num_generations", 1))):
                if str(traj_id) in done:
                    continue
                claim = Claim(raw["_id"], traj_id, int(raw.get("epoch", 0)), self.split, name)
                if await ctx.leases.acquire(claim.record_id, claim.to_json()):
                    return claim
        raise NoTaskAvailableError(f"no unsampled trajectory in split {self.split!r}")

    async def _close_context(self) -> None:
        if self._own_context and self._context is not None:
            await self._context.aclose()
            self._context = None

    # --- task hooks (StatefulSampler overrides them) --------------------------------------------

    async def _load_task(self, task_id: str) -> dict[str, Any]:
        """The raw task document for a trajectory about to start (process cache).

        Raises:
            NoTaskAvailableError: the task does not exist.
        """
        raw = await self.context.task(task_id)
        if raw is None:
            raise NoTaskAvailableError(f"task {task_id} does not exist")
        return raw

    async def _save_task_state(self) -> None:
        """Store what the trajectory left in the task (nothing for independent samples)."""
        return None

    async def _release_task(self) -> None:
        """Let the task's next trajectory start (nothing for independent samples)."""
        return None


class StatefulSampler(AsyncSampler, ABC):
    """A sampler whose trajectories of one task run one at a time and share ``task.state``.

    Entering takes the task's lock (waiting while another trajectory of the task runs), reloads
    the task with the state the previous trajectory left, and marks it RUNNING; leaving stores
    ``self.task.state`` and marks the task WAITING (COMPLETED once its group is scored), so the
    next trajectory continues from this one's state.
    """

    _task_locked: bool = False

    async def _load_task(self, task_id: str) -> dict[str, Any]:
        """Take the task's lock (waiting for the running trajectory of the task), then load the
        task fresh (with the state the previous trajectory left) and mark it RUNNING."""
        ctx = self.context
        while not await ctx.leases.acquire(f"task:{task_id}"):
            await asyncio.sleep(STATEFUL_POLL_S)
        self._task_locked = True
        raw = await ctx.store.collection(Task).find_one_and_update(
            {"_id": task_id, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:
            raw = await ctx.store.collection(Task).find_one({"_id": task_id})
        if raw is None:
            raise NoTaskAvailableError(f"task {task_id} does not exist")
        return raw

    async def _save_task_state(self) -> None:
        """Store ``self.task.state`` and mark the task WAITING (before the score completes it)."""
        task = self.task
        if task is None:  # pragma: no cover - __aenter__ failed
            return
        await self.context.store.collection(Task).update_one(
            {"_id": task.id, "status": {"$ne": TaskStatus.COMPLETED.value}},
            {"$set": {"state": task.state, "status": TaskStatus.WAITING.value,
                      "updated_at": utcnow()}},
        )

    async def _release_task(self) -> None:
        """Release the task's lock so its next trajectory starts."""
        if self._task_locked and self.claim is not None:
            self._task_locked = False
            await self.context.leases.release(f"task:{self.claim.task_id}")
