"""The sampling job: one message = one trajectory ``(task_id, traj_id, epoch)``.

The job resolves the message's registered sampler name (never an import path) and hands the
trajectory to the process's event loop (:func:`agentrl.rollout.runtime.runtime_for`), which
admits it, takes its lease and runs it; the message is acknowledged once the lease is held.
A copy of the message whose first copy still runs finds the live lease and ends (``leased``);
everything else that happens to the trajectory is the ledger's (:mod:`agentrl.rollout.ledger`).

The signal handlers wire the runtime to the worker's life: an explicit ``-P prefork`` is honoured
(one event loop per child), ``eventlet``/``gevent`` are refused, a stopping worker admits no new
trajectory and hands the unfinished ones back (:meth:`SamplingRuntime.close`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import (
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from agentrl.celery_app import SAMPLE_TASK, requested_pool
from agentrl.rollout.claims import Claim
from agentrl.rollout.runtime import check_pool, close_runtime, runtime_for, stop_admitting

NOT_ADMITTED = "not admitted"
"""Start of the reason of a Reject for back-pressure (the runtime is full or closing)."""


class _BackPressureFilter(logging.Filter):
    """Keeps Celery's tracer from logging a back-pressure requeue as a WARNING with a traceback
    (Celery logs every ``Reject`` so): a message put back because this process is full or
    stopping is how admission works, not a fault, and would flood the log under load."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        return not (isinstance(data, dict) and NOT_ADMITTED in str(data.get("exc", "")))


logging.getLogger("celery.app.trace").addFilter(_BackPressureFilter())


@shared_task(name=SAMPLE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def sample(self: Task, **claim: Any) -> str:
    """Hand the trajectory the message names to this process's sampling runtime.

    Args:
        **claim: the :class:`Claim` fields (``task_id``, ``traj_id``, ``epoch``, ``split``,
            ``sampler``, ``model``, ``resample``).

    Returns:
        ``started`` or ``leased``.

    Raises:
        Reject: the worker is stopping or full; the message goes back to the queue.
        UnknownSamplerError: no sampler of that name is registered in this worker.
    """
    outcome = runtime_for(self.app).submit(Claim.from_json(claim))
    if outcome in ("closing", "busy"):
        raise Reject(f"{NOT_ADMITTED} ({outcome})", requeue=True)
    return outcome


@worker_init.connect(weak=False)
def _choose_pool(sender: Any = None, **_: Any) -> None:
    pool = requested_pool(sys.argv)
    if pool == "prefork" and sender is not None:
        sender.pool_cls = "prefork"  # Celery's CLI cannot tell -P prefork from its default
    check_pool(pool or getattr(sender, "pool_cls", ""))


@worker_shutting_down.connect(weak=False)
def _stop_admitting(**_: Any) -> None:
    stop_admitting()


@worker_shutdown.connect(weak=False)
def _close(**_: Any) -> None:
    close_runtime()


@worker_process_shutdown.connect(weak=False)
def _close_child(**_: Any) -> None:
    close_runtime()
