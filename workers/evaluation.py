"""The evaluation jobs, on the ``evaluation`` queue (see :mod:`agentrl.evaluation`).

- ``agentrl.evaluate`` (:func:`evaluate_job`): first run — load the dataset with the sampler's
  ``load_dataset``, insert the tasks, send one trajectory message per ``(task, traj_id)``; later
  runs (``Task.retry`` every ``poll_interval_s``, so no worker slot is held while waiting) —
  return the summary once every task is COMPLETED or the deadline passed.
- each trajectory is an ordinary sampling message (``agentrl.sample``) on the ``evaluation``
  queue whose claim names the evaluation's model and ``resample: false``: a trajectory whose
  sampler fails is FAILED and counted, not sampled again (infrastructure failures are still
  retried: an outage is not the model's fault).

Flower shows both with their kwargs: the job's evaluation id, sampler, dataset, model and split;
each trajectory's ``task_id``, ``traj_id``, ``epoch``, ``split``, ``sampler`` and ``model``.

Every worker imports this module (it is in :data:`agentrl.celery_app.TASK_MODULES`); consume the
``evaluation`` queue (``celery -A agentrl worker -Q sampling,evaluation``) to run evaluations.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import worker_shutdown

from agentrl.celery_app import app_config, enqueue_claims
from agentrl.databases import Databases, init_databases
from agentrl.evaluation import (
    EVALUATE_TASK,
    EvaluationSpec,
    dispatch_evaluation,
    elapsed_since,
    evaluation_tasks_open,
    summarize_evaluation,
)

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_databases: dict[int, Databases] = {}


def databases_for(app: Celery) -> Databases:
    """The process's sync connections for ``app`` (opened on first use)."""
    with _lock:
        dbs = _databases.get(id(app))
        if dbs is None:
            dbs = _databases[id(app)] = init_databases(app_config(app))
        return dbs


@worker_shutdown.connect(weak=False)
def _close_all(**_: Any) -> None:
    with _lock:
        databases = list(_databases.values())
        _databases.clear()
    for dbs in databases:
        dbs.close()


@shared_task(name=EVALUATE_TASK, bind=True, acks_late=True, ignore_result=False,
             max_retries=None)
def evaluate_job(self: Task, **job: Any) -> dict[str, Any]:
    """Run one evaluation (see the module docstring).

    Args:
        **job: the :class:`~agentrl.evaluation.EvaluationSpec` fields.

    Returns:
        The summary (:func:`agentrl.evaluation.summarize_evaluation`).

    Raises:
        EvaluationError: the dataset or sampler cannot be used.
        celery.exceptions.Retry: while trajectories are still running (by design).
    """
    spec = EvaluationSpec.from_json(job)
    dbs = databases_for(self.app)
    if not spec.dispatched:
        dispatch_evaluation(dbs, spec, lambda claims: enqueue_claims(self.app, claims))
        later = EvaluationSpec.from_json({
            **spec.to_json(), "dispatched": True, "deadline_at": time.time() + spec.max_wait_s,
        })
        raise self.retry(kwargs=later.to_json(), countdown=spec.poll_interval_s)
    if evaluation_tasks_open(dbs.store, spec) and time.time() < spec.deadline_at:
        raise self.retry(countdown=spec.poll_interval_s)
    return summarize_evaluation(
        dbs.store, spec, elapsed_s=elapsed_since(spec.deadline_at, spec.max_wait_s))
