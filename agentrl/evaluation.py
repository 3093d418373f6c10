"""Ad-hoc evaluation jobs: sample a dataset once with a model, get a summary back.

From Python::

    from agentrl.evaluation import evaluate
    result = evaluate(sampler="math", dataset="gsm8k_test.jsonl", model="SmolLM2-135M-Instruct",
                      split="eval", num_samples=1)
    summary = result.get(timeout=600)   # {"accuracy": 0.25, "count": 8, "failures": 0, ...}

and from the shell: ``agentrl eval gsm8k_test.jsonl --sampler math --model NAME`` (a progress bar).

One evaluation, step by step:

1. :func:`evaluate` (the caller) checks the arguments, registers ``service_url`` (if given) as an
   external inference service serving ``model`` — the API key stays in MongoDB, never in a
   message — and sends one ``agentrl.evaluate`` message (id = the evaluation id) to the
   ``evaluation`` queue. It returns the Celery ``AsyncResult``.
2. A worker runs :func:`workers.evaluation.evaluate_job`, which calls
   :func:`dispatch_evaluation`: it loads the dataset with the sampler's ``load_dataset``
   (``eval_file`` = the dataset path, read on the worker), inserts one Task per item (ids
   ``evaluation-<id>-<index>``, the given split, epoch 0) and opens one claim per
   ``(task, traj_id)`` on the ``evaluation`` queue; the job then re-schedules itself
   (``Task.retry``) every ``poll_interval_s`` — it holds no worker slot while it waits.
3. Workers run each trajectory with the registered sampler, asking for ``model`` (an ordinary
   sampling message whose claim names the model and ``resample: false``): a trajectory whose
   sampler fails is FAILED with its error, counted as a failure and as not correct (no
   resampling: a failure is part of the result); an infrastructure failure is retried.
4. Once every task is COMPLETED (or ``max_wait_s`` passed) the job returns
   :func:`summarize_evaluation` — the value of ``AsyncResult.get()``.

Evaluation records never feed training: their split is never ``train`` (:func:`evaluate` refuses
it), and the trainer only claims READY records of the ``train`` split. Epoch 0 marks ad-hoc
evaluations in ``agentrl status`` (epochs pushed by beat start at 1).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from agentrl.celery_app import EVALUATION_QUEUE, app_config, make_app
from agentrl.celery_app import app as default_app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    MongoStore,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
    init_databases,
    utcnow,
)
from agentrl.errors import AgentRLError, EvaluationError
from agentrl.inference.services import register_service
from agentrl.rollout.claims import Claim
from agentrl.rollout.epochs import iter_dataset
from agentrl.rollout.ledger import Enqueue, GlobalStep, open_claims
from agentrl.rollout.outcomes import WELL_FORMED, metric_field, metric_value
from agentrl.rollout.registry import get_sampler

log = logging.getLogger(__name__)

EVALUATE_TASK = "agentrl.evaluate"
"""Name of the evaluation job (kwargs: an :class:`EvaluationSpec`)."""
EVALUATION_EPOCH = 0
"""Epoch of ad-hoc evaluation tasks and records (beat's epochs start at 1)."""
TASK_ID_PREFIX = "evaluation-"
"""Evaluation task ids are ``evaluation-<evaluation id>-<index:06d>``."""
CORRECT_SCORE = 1.0
"""A record scoring at least this (minus :data:`SCORE_EPS`) counts as correct for ``accuracy``."""
SCORE_EPS = 1e-6
SCORED = (RecordStatus.SCORED.value, RecordStatus.READY.value, RecordStatus.ABANDONED.value)
"""Record statuses of a scored evaluation trajectory."""
FINISHED = (*SCORED, RecordStatus.FAILED.value)
"""Record statuses of a finished evaluation trajectory (scored, or failed for good)."""


@dataclass(frozen=True)
class EvaluationSpec:
    """What an evaluation job samples: the JSON kwargs of its ``agentrl.evaluate`` message.

    Attributes:
        evaluation_id: 12 hex characters; also the Celery task id of the job.
        sampler: the registered sampler name.
        dataset: path of the dataset file, as the worker reads it (absolute).
        model: served model name to ask for (``""``: the worker's ``model_name``).
        split: the split recorded on tasks and records (never ``train``).
        num_samples: trajectories per task.
        limit: evaluate only the first N dataset items (0: all), after ``offset``.
        offset: skip the first N dataset items (held-out items of a file that training uses).
        temperature: sampling temperature of the calls (``None``: the configured one; 0:
            greedy).
        max_wait_s: seconds after dispatch after which the job returns what is finished.
        poll_interval_s: seconds between the job's looks at the tasks.
        dispatched: whether the tasks were inserted and the trajectories sent.
        deadline_at: UNIX time (s) after which the job stops waiting (set at dispatch).
    """

    evaluation_id: str
    sampler: str
    dataset: str
    model: str = ""
    split: str = "eval"
    num_samples: int = 1
    limit: int = 0
    offset: int = 0
    temperature: float | None = None
    max_wait_s: float = 3600.0
    poll_interval_s: float = 2.0
    dispatched: bool = False
    deadline_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (the message's kwargs)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationSpec:
        """Build a spec from a message's kwargs (unknown keys are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def task_prefix(self) -> str:
        """The id prefix of this evaluation's tasks."""
        return f"{TASK_ID_PREFIX}{self.evaluation_id}-"

    def task_id(self, index: int) -> str:
        """The id of the task of dataset item ``index``."""
        return f"{self.task_prefix}{index:06d}"


def new_evaluation_id() -> str:
    """A fresh evaluation id (12 hex characters)."""
    return uuid.uuid4().hex[:12]


def id_prefix_query(prefix: str) -> dict[str, Any]:
    """A MongoDB condition matching strings that start with ``prefix``."""
    return {"$regex": "^" + re.escape(prefix)}


def evaluation_progress(store: MongoStore, evaluation_id: str) -> tuple[int, int]:
    """How far an evaluation is: ``(finished trajectories, expected trajectories)``.

    ``expected`` is 0 until the job has inserted its tasks.
    """
    prefix = f"{TASK_ID_PREFIX}{evaluation_id}-"
    expected = sum(
        int(raw.get("num_generations", 1))
        for raw in store.collection(Task).find(
            {"_id": id_prefix_query(prefix)}, {"num_generations": 1})
    )
    finished = store.collection(Record).count_documents(
        {"task_id": id_prefix_query(prefix), "epoch": EVALUATION_EPOCH,
         "status": {"$in": list(FINISHED)}}
    )
    return finished, expected


def summarize_evaluation(
    store: MongoStore, spec: EvaluationSpec, elapsed_s: float | None = None
) -> dict[str, Any]:
    """The summary of an evaluation, read from MongoDB (2 queries).

    Args:
        store: MongoDB access.
        spec: the evaluation.
        elapsed_s: seconds since dispatch, reported as ``elapsed_s``.

    Returns:
        ``evaluation_id``, ``sampler``, ``dataset``, ``model``, ``split``, ``num_samples``;
        ``tasks`` (inserted) and ``tasks_completed``; ``expected`` trajectories; ``count``
        (finished trajectories: scored or FAILED); ``unfinished``; ``mean_score`` (of the scored
        ones, ``None`` when none) and ``accuracy`` (share of finished trajectories scoring >=
        :data:`CORRECT_SCORE`: a FAILED one is not correct; ``None`` when nothing finished);
        ``well_formed_rate`` (share of finished trajectories whose sampler reported them
        well-formed, ``None`` when nothing finished);
        ``failures`` (FAILED trajectories); ``by_status`` (records per status); ``record_ids``
        (finished, sorted).
    """
    tasks = list(store.collection(Task).find(
        {"_id": id_prefix_query(spec.task_prefix)}, {"num_generations": 1, "status": 1}))
    records = list(store.collection(Record).find(
        {"task_id": id_prefix_query(spec.task_prefix), "epoch": EVALUATION_EPOCH},
        {"status": 1, "score": 1, "error": 1, metric_field(WELL_FORMED): 1},
    ))
    finished = [r for r in records if r.get("status") in FINISHED]
    scores = [float(r.get("score") or 0.0) for r in finished if r.get("status") in SCORED]
    by_status: dict[str, int] = {}
    for raw in records:
        status = str(raw.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
    expected = sum(int(t.get("num_generations", 1)) for t in tasks)
    mean = sum(scores) / len(scores) if scores else None
    correct = sum(1 for s in scores if s >= CORRECT_SCORE - SCORE_EPS)
    return {
        "evaluation_id": spec.evaluation_id,
        "sampler": spec.sampler,
        "dataset": spec.dataset,
        "model": spec.model,
        "split": spec.split,
        "num_samples": spec.num_samples,
        "tasks": len(tasks),
        "tasks_completed": sum(1 for t in tasks if t.get("status") == TaskStatus.COMPLETED.value),
        "expected": expected,
        "count": len(finished),
        "unfinished": expected - len(finished),
        "mean_score": mean,
        "accuracy": correct / len(finished) if finished else None,
        "well_formed_rate": sum(1 for r in finished if metric_value(r, WELL_FORMED)) / len(finished)
        if finished else None,
        "failures": sum(1 for r in finished if r.get("status") == RecordStatus.FAILED.value),
        "by_status": by_status,
        "record_ids": sorted(str(r["_id"]) for r in finished),
        "elapsed_s": elapsed_s,
    }


def evaluate(
    sampler: str,
    dataset: str | Path,
    model: str = "",
    split: str = "eval",
    num_samples: int = 1,
    *,
    service_url: str = "",
    api_key: str | None = None,
    limit: int = 0,
    offset: int = 0,
    temperature: float | None = None,
    max_wait_s: float = 3600.0,
    poll_interval_s: float = 2.0,
    config: AgentTrainingConfig | None = None,
    app: Celery | None = None,
) -> AsyncResult:
    """Enqueue an evaluation job on the ``evaluation`` queue (see the module docstring).

    Args:
        sampler: registered sampler name (``math``...), resolved on the worker.
        dataset: dataset file; a relative path is made absolute here (workers on other machines
            need it at the same path, e.g. a shared filesystem).
        model: served model name to ask for (``""``: the workers' ``model_name``).
        split: split recorded on the tasks and records; never ``train``.
        num_samples: trajectories per task (>= 1).
        service_url: an OpenAI-compatible endpoint to evaluate against; registered as an
            external service serving ``model`` before the job is sent.
        api_key: bearer key of ``service_url`` (stored in MongoDB, never sent in a message).
        limit: evaluate only the first N items (0: all), after ``offset``.
        offset: skip the first N items (e.g. the ones a run trains on).
        temperature: sampling temperature (``None``: the workers' ``temperature``; 0: greedy).
        max_wait_s: seconds the job waits for its trajectories before returning what finished.
        poll_interval_s: seconds between the job's looks at its tasks.
        config: the configuration (broker, MongoDB); ``None`` uses :func:`load_config` through
            the default app.
        app: the Celery app to send with (default: ``make_app(config)``, or ``agentrl.app``).

    Returns:
        The job's ``AsyncResult`` (``id`` = the evaluation id); ``.get(timeout=...)`` returns
        the :func:`summarize_evaluation` dict.

    Raises:
        EvaluationError: ``split`` is ``train``, ``num_samples`` < 1, or ``service_url`` is
            given without ``model``.
    """
    evaluation_id = new_evaluation_id()
    if split == "train":
        raise EvaluationError(
            evaluation_id,
            "split 'train' is refused: evaluation records must never feed training; "
            "use e.g. split='eval'",
        )
    if num_samples < 1:
        raise EvaluationError(evaluation_id, f"num_samples = {num_samples}: give 1 or more")
    if service_url and not model:
        raise EvaluationError(
            evaluation_id, f"service_url {service_url!r} needs model= (the name it serves)")
    if app is None:
        app = default_app if config is None else make_app(config)
    if service_url:
        with init_databases(config or app_config(app)) as dbs:
            register_service(dbs.store, service_url, model, api_key)
    spec = EvaluationSpec(
        evaluation_id=evaluation_id, sampler=sampler, dataset=str(Path(dataset).resolve()),
        model=model, split=split, num_samples=num_samples, limit=limit, offset=offset,
        temperature=temperature, max_wait_s=max_wait_s, poll_interval_s=poll_interval_s,
    )
    return app.send_task(
        EVALUATE_TASK, kwargs=spec.to_json(), queue=EVALUATION_QUEUE, task_id=evaluation_id,
    )


def elapsed_since(deadline_at: float, max_wait_s: float) -> float:
    """Seconds since dispatch, from the job's deadline (UNIX s) and its ``max_wait_s``."""
    return max(0.0, time.time() - (deadline_at - max_wait_s))


def dispatch_evaluation(dbs: Databases, spec: EvaluationSpec, enqueue: Enqueue) -> int:
    """Insert the evaluation's tasks and open its claims (idempotent by id): ordinary sampling
    messages on the ``evaluation`` queue naming ``spec.model``, never resampled.

    Returns:
        The number of trajectory messages sent.

    Raises:
        EvaluationError: unknown sampler, unreadable dataset, or an empty dataset.
    """
    try:
        sampler_class = get_sampler(spec.sampler)
        config = dbs.config.model_copy(update={"eval_file": spec.dataset})
        dataset = sampler_class.load_dataset(config, spec.split)
        end = spec.offset + spec.limit if spec.limit else 0
        items = list(iter_dataset(dataset, end))[spec.offset:]
    except (AgentRLError, TypeError) as exc:
        raise EvaluationError(spec.evaluation_id, f"cannot load {spec.dataset}: {exc}") from exc
    if not items:
        raise EvaluationError(spec.evaluation_id, f"dataset {spec.dataset} holds no task")
    step, now = GlobalStep(dbs).get(), utcnow()
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
        Claim(task.id, traj_id, EVALUATION_EPOCH, spec.split, spec.sampler, model=spec.model,
              resample=False, temperature=spec.temperature)
        for task in tasks for traj_id in range(spec.num_samples)
    ]
    open_claims(dbs, claims, enqueue)
    log.info("evaluation %s: %d tasks, %d trajectories sent", spec.evaluation_id, len(tasks),
                len(claims))
    return len(claims)


def evaluation_tasks_open(store: MongoStore, spec: EvaluationSpec) -> int:
    """Tasks of the evaluation not yet COMPLETED."""
    return store.collection(Task).count_documents({
        "_id": id_prefix_query(spec.task_prefix),
        "status": {"$ne": TaskStatus.COMPLETED.value},
    })
