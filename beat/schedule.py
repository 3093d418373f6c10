"""Beat's jobs: ``push_epoch(split)`` and housekeeping, and the scheduler that runs them.

:class:`LocalScheduler` (the app's ``beat_scheduler``) runs these two jobs inside the beat
process instead of sending them to a queue, so an epoch push or the recovery of a dead worker's
trajectories never waits behind thousands of sampling messages. Both are also Celery tasks
(``agentrl.push_epoch``, ``agentrl.housekeeping``) that a worker can run when sent.

Beat's dataset for a split comes from the configured sampler: ``get_sampler(config.sampler)
.load_dataset(config, split)`` (``train_file`` for train, ``eval_file`` otherwise).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, shared_task
from celery.beat import Scheduler

from agentrl.celery_app import HOUSEKEEPING_TASK, PUSH_EPOCH_TASK, app_config, enqueue_claims
from agentrl.databases import Databases, init_databases
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.ledger import housekeep
from agentrl.rollout.registry import get_sampler

logger = logging.getLogger(__name__)

LOCAL_TASKS = frozenset({PUSH_EPOCH_TASK, HOUSEKEEPING_TASK})

_databases: dict[int, Databases] = {}
_datasets: dict[tuple[int, str], Any] = {}


def databases_for(app: Celery) -> Databases:
    """This process's connections for ``app``'s configuration (opened once)."""
    dbs = _databases.get(id(app))
    if dbs is None:
        dbs = _databases[id(app)] = init_databases(app_config(app))
    return dbs


def dataset_for(app: Celery, split: str) -> Any:
    """The configured sampler's dataset of ``split`` (loaded once per process)."""
    key = (id(app), split)
    if key not in _datasets:
        config = app_config(app)
        _datasets[key] = get_sampler(config.sampler).load_dataset(config, split)
    return _datasets[key]


@shared_task(name=PUSH_EPOCH_TASK, bind=True, ignore_result=True)
def push_epoch_job(self: Task, split: str) -> int | None:
    """Push the next epoch of ``split`` when the current one is finished.

    Returns:
        The epoch pushed, or ``None``.
    """
    app = self.app
    config = app_config(app)
    return push_epoch(
        databases_for(app), split, dataset_for(app, split), config.sampler,
        lambda claims: enqueue_claims(app, claims),
    )


@shared_task(name=HOUSEKEEPING_TASK, bind=True, ignore_result=True)
def housekeeping(self: Task) -> int:
    """One pass of the ledger's housekeeping (:func:`agentrl.rollout.ledger.housekeep`).

    Returns:
        The number of claims re-sent or rebuilt.
    """
    app = self.app
    done = housekeep(databases_for(app), lambda claims: enqueue_claims(app, claims))
    return done.resent + done.rebuilt


class LocalScheduler(Scheduler):
    """An in-memory beat scheduler that runs :data:`LOCAL_TASKS` in the beat process."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        if entry.task not in LOCAL_TASKS:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        try:
            self.app.tasks[entry.task](*entry.args, **entry.kwargs)
        except Exception:  # noqa: BLE001 - beat keeps beating
            logger.exception("beat job %s failed", entry.name)
        return None
