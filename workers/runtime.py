"""One asyncio event loop per worker process, shared by all its trajectories.

Celery's ``threads`` pool gives each sampling message a thread; :meth:`SamplingRuntime.run_claim`
hands the trajectory to the process's event loop thread (``asyncio.run_coroutine_threadsafe``)
and blocks until it ends, so the message is acknowledged (``acks_late``) only after the
trajectory is scored. Trajectories mostly wait on HTTP, so hundreds share one loop; MongoDB,
Redis, the lease heartbeat and the router are opened once per process (:class:`SamplerContext`).

Admission: at most ``max_concurrent_samples_per_process`` trajectories run at once, and, when
inference services are registered, a trajectory starts only while the running requests of the
UP services are below ``target_concurrency`` per service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import InferenceService, ServiceStatus
from agentrl.errors import TrajectoryFinishedError, TrajectoryLeasedError
from agentrl.rollout.claims import Claim
from agentrl.rollout.registry import get_sampler
from agentrl.rollout.sampler import SamplerContext

logger = logging.getLogger(__name__)

ADMISSION_REFRESH_S = 1.0
"""Seconds a snapshot of the services' running requests is reused."""
ADMISSION_POLL_S = 0.2
"""Seconds between admission checks while the services are full."""


class Admission:
    """Waits while the registered inference services run ``target_concurrency`` requests each.

    Args:
        context: the process's sampler context (MongoDB access).
    """

    def __init__(self, context: SamplerContext) -> None:
        self.context = context
        self._checked_at = 0.0
        self._open = True

    async def _refresh(self) -> None:
        coll = self.context.store.collection(InferenceService)
        services = [
            raw async for raw in coll.find(
                {"status": ServiceStatus.UP.value}, {"running_req_count": 1}
            )
        ]
        capacity = len(services) * self.context.config.target_concurrency
        running = sum(int(s.get("running_req_count", 0)) for s in services)
        self._open = not services or running < capacity
        self._checked_at = time.monotonic()

    async def wait(self) -> None:
        """Return once a new trajectory may start."""
        while True:
            if time.monotonic() - self._checked_at > ADMISSION_REFRESH_S:
                try:
                    await self._refresh()
                except Exception:  # noqa: BLE001 - admission must not kill sampling
                    logger.exception("admission check failed; admitting")
                    self._open = True
            if self._open:
                return
            await asyncio.sleep(ADMISSION_POLL_S)


class SamplingRuntime:
    """The event loop thread, sampler context and admission of one worker process.

    Args:
        config: the run configuration.
    """

    def __init__(self, config: AgentTrainingConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="agentrl-sampling-loop", daemon=True
        )
        self.thread.start()
        self.context, self.slots, self.admission = self._call(self._open())
        self.outcomes: dict[str, int] = {}

    async def _open(self) -> tuple[SamplerContext, asyncio.Semaphore, Admission]:
        context = SamplerContext.open(self.config)
        return (context, asyncio.Semaphore(self.config.max_concurrent_samples_per_process),
                Admission(context))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def run_claim(self, claim: Claim) -> str:
        """Run one trajectory to its end (called from a pool thread; blocks).

        Returns:
            ``scored``, ``failed`` (the claim went back for another attempt), ``leased`` (another
            copy runs it) or ``finished`` (already scored).

        Raises:
            UnknownSamplerError: the claim names no registered sampler.
        """
        outcome = self._call(self._run(claim))
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome

    async def _run(self, claim: Claim) -> str:
        sampler_class = get_sampler(claim.sampler)
        async with self.slots:
            await self.admission.wait()
            sampler = sampler_class(
                self.config, split=claim.split, claim=claim, context=self.context
            )
            try:
                async with sampler:
                    await sampler.run()
            except TrajectoryLeasedError:
                return "leased"
            except TrajectoryFinishedError:
                return "finished"
            return "failed" if sampler.failed is not None else "scored"

    def close(self) -> None:
        """Close the connections and stop the loop thread."""
        try:
            self._call(self.context.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
