"""The evaluation jobs, on the ``evaluation`` queue (see :mod:`agentrl.evaluation`).

- ``agentrl.evaluate`` (:func:`evaluate_job`): first run — load the dataset with the sampler's
  ``load_dataset``, insert the tasks, send one trajectory message per ``(task, traj_id)``; later
  runs (``Task.retry`` every ``poll_interval_s``, so no worker slot is held while waiting) —
  return the summary once every task is COMPLETED or the deadline passed.
- ``agentrl.evaluate_trajectory`` (:func:`evaluate_trajectory`): one trajectory, run by the
  registered sampler on a :class:`~workers.runtime.SamplingRuntime` whose configuration asks for
  the evaluation's model and does not resample failures (a failure scores 0 and is counted).

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

from agentrl.celery_app import EVALUATION_QUEUE, app_config
from agentrl.databases import Databases, TaskStatus, init_databases, utcnow
from agentrl.databases import Task as TaskDocument
from agentrl.errors import AgentRLError, EvaluationError
from agentrl.evaluation import (
    EVALUATE_TASK,
    EVALUATE_TRAJECTORY_TASK,
    EVALUATION_EPOCH,
    EvaluationSpec,
    elapsed_since,
    id_prefix_query,
    summarize_evaluation,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.epochs import iter_dataset
from agentrl.rollout.registry import get_sampler
from workers.runtime import SamplingRuntime

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_runtimes: dict[tuple[int, str], SamplingRuntime] = {}
_databases: dict[int, Databases] = {}


def databases_for(app: Celery) -> Databases:
    """The process's sync connections for ``app`` (opened on first use)."""
    with _lock:
        dbs = _databases.get(id(app))
        if dbs is None:
            dbs = _databases[id(app)] = init_databases(app_config(app))
        return dbs


def evaluation_runtime(app: Celery, model: str) -> SamplingRuntime:
    """The process's runtime for evaluation trajectories asking for ``model``.

    Its configuration is the worker's, with ``model_name`` = ``model`` (when given) and
    ``resample_error_records`` off.
    """
    with _lock:
        runtime = _runtimes.get((id(app), model))
        if runtime is None:
            base = app_config(app)
            config = base.model_copy(update={
                "model_name": model or base.model_name, "resample_error_records": False,
            })
            runtime = _runtimes[(id(app), model)] = SamplingRuntime(config)
        return runtime


@worker_shutdown.connect(weak=False)
def _close_all(**_: Any) -> None:
    with _lock:
        runtimes, databases = list(_runtimes.values()), list(_databases.values())
        _runtimes.clear()
        _databases.clear()
    for runtime in runtimes:
        runtime.close()
    for dbs in databases:
        dbs.close()


def dispatch(app: Celery, dbs: Databases, spec: EvaluationSpec) -> int:
    """Insert the evaluation's tasks and send its trajectory messages (idempotent by id).

    Returns:
        The number of trajectory messages sent.

    Raises:
        EvaluationError: unknown sampler, unreadable dataset, or an empty dataset.
    """
    try:
        sampler_class = get_sampler(spec.sampler)
        config = dbs.config.model_copy(update={"eval_file": spec.dataset})
        dataset = sampler_class.load_dataset(config, spec.split)
        items = list(iter_dataset(dataset, spec.limit))
    except (AgentRLError, TypeError) as exc:
        raise EvaluationError(spec.evaluation_id, f"cannot load {spec.dataset}: {exc}") from exc
    if not items:
        raise EvaluationError(spec.evaluation_id, f"dataset {spec.dataset} holds no task")
    step, now = dbs.global_step.get(), utcnow()
    tasks = [
        item.model_copy(update={
            "id": spec.task_id(index), "split": spec.split, "epoch": EVALUATION_EPOCH,
            "index": index, "added_step": step, "status": TaskStatus.CREATED,
            "num_generations": spec.num_samples, "sampler": spec.sampler, "scores": {},
            "created_at": now, "updated_at": now,
        })
        for index, item in items
    ]
    dbs.store.insert_many(tasks)  # type: ignore[arg-type]
    claims = [
        Claim(task.id, traj_id, EVALUATION_EPOCH, spec.split, spec.sampler)
        for task in tasks for traj_id in range(spec.num_samples)
    ]
    with app.producer_or_acquire() as producer:
        for claim in claims:
            app.send_task(
                EVALUATE_TRAJECTORY_TASK,
                kwargs={**claim.to_json(), "model": spec.model,
                        "evaluation_id": spec.evaluation_id},
                queue=EVALUATION_QUEUE, producer=producer,
            )
    logger.info("evaluation %s: %d tasks, %d trajectories sent", spec.evaluation_id, len(tasks),
                len(claims))
    return len(claims)


def tasks_open(dbs: Databases, spec: EvaluationSpec) -> int:
    """Tasks of the evaluation not yet COMPLETED."""
    return dbs.store.collection(TaskDocument).count_documents({
        "_id": id_prefix_query(spec.task_prefix),
        "status": {"$ne": TaskStatus.COMPLETED.value},
    })


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
        dispatch(self.app, dbs, spec)
        later = EvaluationSpec.from_json({
            **spec.to_json(), "dispatched": True, "deadline_at": time.time() + spec.max_wait_s,
        })
        raise self.retry(kwargs=later.to_json(), countdown=spec.poll_interval_s)
    if tasks_open(dbs, spec) and time.time() < spec.deadline_at:
        raise self.retry(countdown=spec.poll_interval_s)
    return summarize_evaluation(
        dbs.store, spec, elapsed_s=elapsed_since(spec.deadline_at, spec.max_wait_s))


@shared_task(name=EVALUATE_TRAJECTORY_TASK, bind=True, acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def evaluate_trajectory(
    self: Task, model: str = "", evaluation_id: str = "", **claim: Any
) -> str:
    """Sample and score one evaluation trajectory.

    Args:
        model: served model name to ask for (``""``: the worker's ``model_name``).
        evaluation_id: the evaluation it belongs to (shown in Flower and logs).
        **claim: the :class:`~agentrl.rollout.claims.Claim` fields.

    Returns:
        The outcome (``scored``, ``failed``, ``leased``, ``finished``).
    """
    return evaluation_runtime(self.app, model).run_claim(Claim.from_json(claim))
