"""`AsyncSampler` and `StatefulSampler`: the AgentRL guide's sampling API.

Subclass :class:`AsyncSampler`, write ``async def run(self)`` (the trajectory: LLM calls through
``await self.create_chat_completions(messages, tools=None, **kw)``) and
``async def evaluate_record(self, record) -> float``, then::

    async with MySampler(cfg) as sampler:   # claims a trajectory, starts an attempt
        await sampler.run()                 # on exit: scored, pushed into the task, group READY

Entering claims a trajectory — the one a sampling message names (``claim=``), or any unsampled
one of ``split`` — under a lease, and starts its next attempt; it raises
:class:`~agentrl.errors.NoTaskAvailableError` (its leaves :class:`TrajectoryLeasedError` for a
copy whose first delivery still runs and :class:`TrajectoryFinishedError` for a late
redelivery). Leaving scores the Record with :meth:`evaluate_record` and hands it to the ledger.
An exception in ``run`` or ``evaluate_record`` is kept in :attr:`failed` and handed to the
ledger, which classifies it and starts the trajectory again or fails it
(:mod:`agentrl.rollout.ledger`). What a sampler leaves in ``record.meta`` must be storable:
numpy numbers and arrays become plain numbers and lists, values over
``externalize_threshold_bytes`` go to the object store, anything else BSON cannot hold fails the
attempt as ``invalid_output`` (:mod:`agentrl.rollout.storable`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar

import redis.asyncio as aioredis

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    RUN_STATE_ID,
    AsyncMongoStore,
    Record,
    RunState,
    Task,
    mongo_uri,
)
from agentrl.databases.objectstore import open_object_store
from agentrl.errors import (
    LeaseLostError,
    NoTaskAvailableError,
    RolloutError,
    TrajectoryFinishedError,
    TrajectoryLeasedError,
)
from agentrl.inference.routing import Router
from agentrl.rollout.claims import Claim
from agentrl.rollout.leases import LeaseKeeper
from agentrl.rollout.ledger import Attempt, Enqueue, TrajectoryLedger
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

STEP_REFRESH_S = 0.5
"""Seconds a process reuses the global step it read (calls record it as ``created_at_step``)."""


class SamplerContext:
    """Process-wide resources of samplers: MongoDB, Redis, the ledger, router, a task cache.

    A sampling worker process opens one and passes it to every sampler it runs (many
    trajectories share one event loop); a sampler used on its own opens and closes its own.

    Args:
        config: the run configuration.
        store: async MongoDB store (created in the running event loop).
        redis: asyncio Redis client with ``decode_responses=True``.
        enqueue: sends claims back to the broker (retries, shutdown); ``None``: housekeeping.
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        store: AsyncMongoStore,
        redis: aioredis.Redis,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.config, self.store, self.redis = config, store, redis
        objects = open_object_store(config.oss_connection_string, str(config.object_store_dir))
        self.ledger = TrajectoryLedger(config, store, redis, objects, enqueue)
        self._router: Router | None = None
        self._tasks: collections.OrderedDict[str, asyncio.Future[dict[str, Any] | None]] = (
            collections.OrderedDict())
        self._step, self._step_read_at = 0, -1.0
        self._step_read: asyncio.Future[int] | None = None

    @classmethod
    def open(cls, config: AgentTrainingConfig, enqueue: Enqueue | None = None) -> SamplerContext:
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
        return cls(config, store, aioredis.Redis(connection_pool=pool), enqueue)

    @property
    def leases(self) -> LeaseKeeper:
        """The process's lease keeper (the ledger's)."""
        return self.ledger.leases

    def router(self) -> Router:
        """The shared :class:`~agentrl.inference.routing.Router` (created on first use)."""
        if self._router is None:
            self._router = Router(self.config, self.store, self.redis, self.ledger.leases,
                                  step=self.global_step)
        return self._router

    async def task(self, task_id: str) -> dict[str, Any] | None:
        """The raw task document, marked RUNNING on first load; cached per process.

        Concurrent first loads of one task (the ``num_generations`` trajectories of a group
        start together) share one MongoDB round trip.
        """
        pending = self._tasks.get(task_id)
        if pending is None:
            pending = asyncio.ensure_future(self.ledger.load_task(task_id))
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
        """The trainer's global step, read at most every :data:`STEP_REFRESH_S` seconds (the
        Redis cache, or MongoDB's run state when Redis lost it; concurrent callers share one
        read)."""
        if time.monotonic() - self._step_read_at < STEP_REFRESH_S:
            return self._step
        if self._step_read is None:
            self._step_read = asyncio.ensure_future(self._read_step())
        return await asyncio.shield(self._step_read)

    async def _read_step(self) -> int:
        try:
            value = await self.redis.get(self.ledger.keys.global_step)
            if value is None:
                raw = await self.store.collection(RunState).find_one(
                    {"_id": RUN_STATE_ID}, {"global_step": 1})
                value = (raw or {}).get("global_step") or 0
            self._step, self._step_read_at = int(value), time.monotonic()
            return self._step
        finally:
            self._step_read = None

    async def aclose(self) -> None:
        """Release leases, close the router and the connections."""
        await self.ledger.aclose()
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
        self.attempt: Attempt | None = None
        self.failed: BaseException | None = None

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
        """One LLM call through the router, logged as a DispatchedSamplingTask of this attempt.

        Args:
            messages: OpenAI chat messages.
            tools: OpenAI tool definitions.
            **kw: sampling parameters (``temperature``, ``max_tokens``, ``model``...).

        Returns:
            The OpenAI-format response dict (token ids and logprobs included).

        Raises:
            LeaseLostError: a newer attempt holds the trajectory (this copy must stop).
        """
        if self.attempt is None:
            raise RuntimeError("enter the sampler with `async with` first")
        if self.claim is not None and self.claim.model and "model" not in kw:
            kw["model"] = self.claim.model
        if self.claim is not None and self.claim.temperature is not None:
            kw.setdefault("temperature", self.claim.temperature)
        return await self.context.router().create_chat_completion(
            messages, tools, recorder=self.attempt, **kw
        )

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncSampler:
        if self._context is None:
            self._context = SamplerContext.open(self.config)
        try:
            ledger = self.context.ledger
            if self.claim is None:
                self.claim = await self._find_claim()
            elif not ledger.holds(self.claim) and not await ledger.acquire(self.claim):
                raise TrajectoryLeasedError(self.claim.record_id)
            try:
                self.attempt = await ledger.start(
                    self.claim, self.record_class, await self.context.global_step())
                self.record = self.attempt.record
                raw = await self._load_task(self.claim.task_id)
                self.task = Task.from_mongo(raw)
            except BaseException as exc:
                await self._release_task()
                if self.attempt is not None:
                    await self._give_up(exc)
                elif not isinstance(exc, TrajectoryFinishedError):
                    # the attempt could not even start (MongoDB down past the outage
                    # timeout...): keep the claim, due again after a backoff
                    await asyncio.shield(ledger.resend(
                        self.claim, self.config.infrastructure_retry_backoff_s))
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
        attempt = self.attempt
        if attempt is None:  # pragma: no cover - __aenter__ failed
            return False
        try:
            if exc is None:
                await self._finish(attempt)
            else:
                try:
                    await self._save_task_state()
                except Exception:  # noqa: BLE001 - the attempt's own failure is what counts
                    logger.exception("could not store the state of task %s", attempt.task_id)
                await self._give_up(exc)
        finally:
            try:
                await self._release_task()
            finally:
                await self._close_context()
        return exc is None or isinstance(exc, Exception)

    async def _finish(self, attempt: Attempt) -> None:
        """Score and store the trajectory; a failure of either goes to :meth:`_give_up`."""
        record = attempt.record
        try:
            await self._save_task_state()
            async with attempt.scoring():
                score = float(await self.evaluate_record(record))
            await attempt.complete(score)
        except LeaseLostError as exc:
            logger.warning("%s", exc)
            await self.context.ledger.release(attempt.claim)
        except Exception as exc:  # noqa: BLE001 - classified and recorded by the ledger
            await self._give_up(exc)

    async def _give_up(self, exc: BaseException) -> None:
        """Hand an attempt that ended with ``exc`` to the ledger (retry or FAILED)."""
        attempt = self.attempt
        if attempt is None:  # pragma: no cover
            return
        if isinstance(exc, LeaseLostError) or attempt.lost:
            logger.warning("trajectory %s attempt %d stopped: a newer attempt holds it",
                           attempt.record_id, attempt.number)
            await self.context.ledger.release(attempt.claim)
            return
        try:
            if isinstance(exc, Exception):
                self.failed = exc
                await attempt.fail(exc)
            else:  # cancelled (shutdown) or interrupted: not the trajectory's fault
                await asyncio.shield(attempt.hand_back(
                    f"the worker stopped during attempt {attempt.number} "
                    f"({type(exc).__name__})"))
        except LeaseLostError as lost:
            logger.warning("%s", lost)
            await self.context.ledger.release(attempt.claim)

    async def _find_claim(self) -> Claim:
        """Claim any unsampled trajectory of ``self.split`` (used without a message).

        Raises:
            NoTaskAvailableError: every trajectory of the split is started or done.
        """
        ledger = self.context.ledger
        name = sampler_name_of(type(self))
        for claim in await ledger.unsampled_claims(self.split):
            if claim.sampler and claim.sampler != name:
                continue
            if await ledger.acquire(claim):
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
        ledger = self.context.ledger
        await ledger.lock_task(task_id, STATEFUL_POLL_S)
        self._task_locked = True
        raw = await ledger.load_task_fresh(task_id)
        if raw is None:
            raise NoTaskAvailableError(f"task {task_id} does not exist")
        return raw

    async def _save_task_state(self) -> None:
        """Store ``self.task.state`` and mark the task WAITING (before the score completes it)."""
        if self.task is not None:
            await self.context.ledger.save_task_state(self.task.id, self.task.state)

    async def _release_task(self) -> None:
        """Release the task's lock so its next trajectory starts."""
        if self._task_locked and self.claim is not None:
            self._task_locked = False
            await self.context.ledger.unlock_task(self.claim.task_id)
