"""The sampling job: one message = one trajectory ``(task_id, traj_id, epoch)``.

The job resolves the message's registered sampler name (never an import path), and runs
``async with Sampler(config, claim=claim) as s: await s.run()`` on the worker process's event loop
(:mod:`workers.runtime`). It is idempotent: a redelivered copy whose first copy still runs finds
the live lease and exits; a copy after a crash restarts the trajectory under the same Record id;
a copy after the Record was scored only makes sure the score reached the task.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import worker_shutdown
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from agentrl.celery_app import SAMPLE_TASK, app_config
from agentrl.rollout.claims import Claim
from workers.runtime import SamplingRuntime

logger = logging.getLogger(__name__)

_runtimes: dict[int, SamplingRuntime] = {}
_runtimes_lock = threading.Lock()


def runtime_for(app: Celery) -> SamplingRuntime:
    """The process's :class:`SamplingRuntime` for ``app`` (created on first use)."""
    with _runtimes_lock:
        runtime = _runtimes.get(id(app))
        if runtime is None:
            runtime = _runtimes[id(app)] = SamplingRuntime(app_config(app))
        return runtime


def close_runtime(app: Celery) -> None:
    """Close the runtime of ``app`` in this process, if any (worker shutdown, scheduler end)."""
    with _runtimes_lock:
        runtime = _runtimes.pop(id(app), None)
    if runtime is not None:
        runtime.close()


@worker_shutdown.connect(weak=False)
def _close_all(**_: Any) -> None:
    for key in list(_runtimes):
        runtime = _runtimes.pop(key, None)
        if runtime is not None:
            runtime.close()


TRANSIENT_ERRORS = (RedisError, PyMongoError)
"""Infrastructure errors after which the message is sent again (Celery retry with backoff)."""


@shared_task(
    name=SAMPLE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
    autoretry_for=TRANSIENT_ERRORS, retry_backoff=2, retry_backoff_max=60, max_retries=20,
)
def sample(self: Task, **claim: Any) -> str:
    """Sample the trajectory the message names.

    Args:
        **claim: the :class:`Claim` fields (``task_id``, ``traj_id``, ``epoch``, ``split``,
            ``sampler``).

    Returns:
        The outcome (``scored``, ``failed``, ``leased``, ``finished``).
    """
    return runtime_for(self.app).run_claim(Claim.from_json(claim))
