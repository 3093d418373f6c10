"""`SamplingRuntime`: one asyncio event loop per worker process, shared by all its trajectories.

A sampling message is handed over, not run, by the pool thread that received it:
:meth:`SamplingRuntime.submit` waits until the process may start another trajectory
(admission), takes the trajectory's lease and returns — so the message is acknowledged once the
claim is safe under a lease, and the trajectory itself costs a coroutine on the process's event
loop, not an OS thread. Thousands of trajectories that mostly wait on HTTP share one loop; MongoDB,
Redis, the ledger, the heartbeat and the router are opened once per process
(:class:`~agentrl.rollout.sampler.SamplerContext`).

Admission: at most ``max_concurrent_samples_per_process`` training trajectories run at once, and
``evaluation_slots_per_process`` more of other splits (evaluations are never starved by a
training epoch); when inference services are registered for the model, a trajectory starts only
while the requests running on the live services (their slot leases) are below
``target_concurrency`` per service. A hand-off that is not admitted within
:data:`HANDOFF_WAIT_S` returns ``busy`` and its message goes back to the queue, so the pool's
threads keep taking messages of both queues.

Stopping (:meth:`SamplingRuntime.close`): no new trajectory is admitted (a waiting hand-off
returns ``closing`` and its message goes back to the queue), running ones get ``grace_s`` to
finish, and the rest are cancelled: each hands its claim back to the broker at once.

Any Celery pool works: ``threads`` (the default: one process, a few hand-off threads),
``prefork`` (one runtime and event loop per child process, created after the fork) and
``solo``. Pools that monkey-patch the standard library (``eventlet``, ``gevent``) are refused
(:func:`check_pool`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from agentrl.celery_app import app_config, enqueue_claims
from agentrl.configs import AgentTrainingConfig
from agentrl.errors import (
    ForeignClaimError,
    RolloutError,
    TrajectoryFinishedError,
    TrajectoryLeasedError,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.registry import get_sampler
from agentrl.rollout.sampler import AsyncSampler, SamplerContext

log = logging.getLogger(__name__)

ADMISSION_REFRESH_S = 1.0
"""Seconds a snapshot of the services' running requests is reused."""
ADMISSION_POLL_S = 0.2
"""Seconds between admission checks while the process or the services are full."""
HANDOFF_WAIT_S = 5.0
"""Seconds a hand-off waits for admission before its message goes back to the queue."""
LEASE_RETRY_MAX_S = 5.0
"""Longest pause between tries to take a lease while Redis does not answer."""
UNSUPPORTED_POOLS = frozenset({"eventlet", "gevent"})
"""Celery pools the runtime cannot work under (they replace the threads the loop runs on)."""


class PoolNotSupportedError(RolloutError):
    """Raised when a worker is started with a pool the sampling runtime cannot run under.

    Attributes:
        pool: the pool asked for.
    """

    def __init__(self, pool: str) -> None:
        self.pool = pool
        super().__init__(
            f"the {pool!r} pool is not supported: agentrl runs trajectories on an asyncio event "
            "loop per process; use the default pool (threads), -P prefork (one loop per child "
            "process) or -P solo"
        )


def check_pool(pool: Any) -> None:
    """Refuse pools that monkey-patch threads and sockets.

    Raises:
        PoolNotSupportedError: ``pool`` is eventlet or gevent.
    """
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    short = str(name).rsplit(".", 1)[-1].split(":")[0]
    if short in UNSUPPORTED_POOLS:
        raise PoolNotSupportedError(short)


class Admission:
    """Waits while the live services of a model run ``target_concurrency`` requests each.

    Args:
        context: the process's sampler context (service registry, slot leases).
    """

    def __init__(self, context: SamplerContext) -> None:
        self.context = context
        self._open: dict[str, tuple[float, bool]] = {}

    async def _is_open(self, model: str) -> bool:
        checked = self._open.get(model)
        now = time.monotonic()
        if checked is not None and now - checked[0] < ADMISSION_REFRESH_S:
            return checked[1]
        router = self.context.router()
        services = await router.live_services(model)
        keys = [router.keys.service_slots(s.id) for s in services]
        running = sum(await self.context.leases.loads(keys))
        is_open = not services or running < len(services) * self.context.config.target_concurrency
        self._open[model] = (now, is_open)
        return is_open

    async def wait(
        self, model: str, closing: threading.Event, timeout_s: float | None = None
    ) -> bool:
        """Return True once a trajectory asking for ``model`` may start; False on closing or
        after ``timeout_s`` seconds."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not closing.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                if await self._is_open(model):
                    return True
            except Exception:  # noqa: BLE001 - admission must not stop sampling
                log.warning("admission check failed; admitting", exc_info=True)
                return True
            await asyncio.sleep(ADMISSION_POLL_S)
        return False


class SamplingRuntime:
    """The event loop thread, sampler context and admission of one worker process.

    Args:
        config: the run configuration.
        enqueue: sends claims back to the broker (retries, hand-backs on shutdown).
    """

    def __init__(
        self, config: AgentTrainingConfig, enqueue: Any = None
    ) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="agentrl-sampling-loop", daemon=True
        )
        self.thread.start()
        self.closing = threading.Event()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._configs: dict[str, AgentTrainingConfig] = {}
        self._running: dict[str, asyncio.Task[str]] = {}
        self.foreign = 0
        self.context, self.admission = self._call(self._open(enqueue))
        self.slots = {True: asyncio.Semaphore(self.config.max_concurrent_samples_per_process),
                      False: asyncio.Semaphore(self.config.evaluation_slots_per_process)}

    async def _open(self, enqueue: Any) -> tuple[SamplerContext, Admission]:
        context = SamplerContext.open(self.config, enqueue)
        return context, Admission(context)

    def _call(self, coro: Any, timeout_s: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def running(self) -> int:
        """Trajectories running now."""
        return len(self._running)

    def submit(self, claim: Claim) -> str:
        """Hand one trajectory to the event loop (called from a pool thread; blocks until it is
        admitted and leased).

        Returns:
            ``started``, ``leased`` (another live attempt holds it), ``busy`` (not admitted
            within :data:`HANDOFF_WAIT_S`) or ``closing`` (the runtime is stopping); on the last
            two the message goes back to the queue.

        Raises:
            UnknownSamplerError: the claim names no registered sampler.
        """
        return str(self._call(self._admit(claim)))

    async def _admit(self, claim: Claim) -> str:
        sampler_class = get_sampler(claim.sampler)
        config = self._config_for(claim)
        slots = self.slots[claim.split == "train"]
        started = time.monotonic()
        try:
            await asyncio.wait_for(slots.acquire(), HANDOFF_WAIT_S)
        except TimeoutError:
            return "closing" if self.closing.is_set() else "busy"
        try:
            left_s = max(0.0, HANDOFF_WAIT_S - (time.monotonic() - started))
            if not await self.admission.wait(config.model_name, self.closing, left_s):
                slots.release()
                return "closing" if self.closing.is_set() else "busy"
            if not await self._acquire_lease(claim):
                slots.release()
                return "leased"
        except BaseException:
            slots.release()
            raise
        task = self.loop.create_task(self._run(sampler_class, config, claim, slots))
        self._running[claim.record_id] = task
        self.context.ledger.on_lost(claim.record_id, task.cancel)
        return "started"

    async def _acquire_lease(self, claim: Claim) -> bool:
        """Take the lease, waiting out a Redis outage for ``mongo_outage_timeout_s``."""
        deadline = time.monotonic() + self.config.mongo_outage_timeout_s
        pause = 0.2
        while True:
            try:
                return await self.context.ledger.acquire(claim)
            except RedisError:
                if time.monotonic() >= deadline or self.closing.is_set():
                    raise
                log.warning("Redis unreachable; retrying the lease of %s", claim.record_id)
                await asyncio.sleep(pause)
                pause = min(pause * 2, LEASE_RETRY_MAX_S)

    def _config_for(self, claim: Claim) -> AgentTrainingConfig:
        """The configuration a claim runs with (its own served model, when it names one)."""
        if not claim.model or claim.model == self.config.model_name:
            return self.config
        if claim.model not in self._configs:
            self._configs[claim.model] = self.config.model_copy(
                update={"model_name": claim.model})
        return self._configs[claim.model]

    async def _run(
        self,
        sampler_class: type[AsyncSampler],
        config: AgentTrainingConfig,
        claim: Claim,
        slots: asyncio.Semaphore,
    ) -> str:
        outcome = "error"
        try:
            sampler = sampler_class(config, split=claim.split, claim=claim,
                                    context=self.context)
            async with sampler:
                await sampler.run()
            record = sampler.record
            if sampler.failed is not None:
                outcome = "retried" if record is not None and record.status.value == "created" \
                    else "failed"
            else:
                outcome = "scored"
        except TrajectoryLeasedError:
            outcome = "leased"
        except TrajectoryFinishedError:
            outcome = "finished"
        except ForeignClaimError as exc:
            outcome = "foreign"
            self.foreign += 1
            if self.foreign == 1 or self.foreign % 1000 == 0:
                log.warning("%s (%d such messages so far)", exc, self.foreign)
        except asyncio.CancelledError:
            outcome = "handed back"
        except Exception:  # noqa: BLE001 - one trajectory must not stop the process
            log.exception("trajectory %s could not run", claim.record_id)
        finally:
            self._running.pop(claim.record_id, None)
            slots.release()
            self.outcomes[outcome] += 1
        return outcome

    def close(self, grace_s: float | None = None) -> None:
        """Stop admitting, let running trajectories finish within ``grace_s`` (default
        ``shutdown_grace_s``), hand the rest back at once, then close the connections."""
        self.closing.set()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        try:
            self._call(self._drain(grace), timeout_s=grace + 60)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("sampling runtime did not drain in time", exc_info=True)
        try:
            self._call(self.context.aclose(), timeout_s=60)
        except Exception:  # noqa: BLE001 - closing must finish
            log.warning("closing the sampler context failed", exc_info=True)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)

    async def _drain(self, grace_s: float) -> None:
        tasks = list(self._running.values())
        if tasks:
            log.info("waiting up to %.0f s for %d running trajectories", grace_s, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                log.warning("handing %d unfinished trajectories back", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=60)


_lock = threading.Lock()
_runtimes: dict[int, SamplingRuntime] = {}


def runtime_for(app: Celery) -> SamplingRuntime:
    """This process's :class:`SamplingRuntime` for ``app`` (created on first use, so under
    prefork each child process gets its own after the fork)."""
    with _lock:
        runtime = _runtimes.get(id(app))
        if runtime is None:
            runtime = _runtimes[id(app)] = SamplingRuntime(
                app_config(app), enqueue=lambda claims: enqueue_claims(app, claims))
        return runtime


def stop_admitting() -> None:
    """Make every runtime of this process refuse new trajectories (a worker shutting down)."""
    with _lock:
        for runtime in _runtimes.values():
            runtime.closing.set()


def close_runtime(app: Celery | None = None, grace_s: float | None = None) -> None:
    """Close this process's runtime for ``app`` (every runtime when ``None``)."""
    with _lock:
        if app is None:
            runtimes = list(_runtimes.values())
            _runtimes.clear()
        else:
            one = _runtimes.pop(id(app), None)
            runtimes = [one] if one is not None else []
    for runtime in runtimes:
        runtime.close(grace_s)
