"""Epoch pushes: when the next epoch of a split is pushed, and what it holds.

:func:`push_epoch` turns a dataset into Task documents and claims, one epoch at a time:

1. under the Redis lock ``push_epoch:<split>`` (two beats or schedulers never push together),
2. if the latest epoch of the split is finished (every task COMPLETED) and fewer than
   ``num_train_epochs`` epochs (``eval_epochs`` for other splits) were pushed, no more than
   ``max_buffered_records`` READY records wait untrained, and (train) the trainer is not done,
3. it inserts the dataset's Tasks with ``split``, ``epoch``, ``index``, ``added_step`` (one bulk
   insert; ids ``<split>-e<epoch>-<index>`` so a retried push inserts nothing twice), and
4. opens one claim per ``(task, traj_id)`` — ``num_generations`` per train task, 1 otherwise —
   through the ledger (:func:`agentrl.rollout.ledger.open_claims`: a ``created`` Record each,
   then the messages).

With ``max_staleness`` set, step 3 inserts the train tasks unreleased and step 4 opens claims
only for the tasks :func:`release_tasks` releases, as many as the staleness budget allows
(:mod:`agentrl.rollout.admission`); every call releases more as the trainer consumes groups.

The run state in MongoDB (:func:`~agentrl.rollout.ledger.pushed_epoch`) holds the last epoch
whose claims were all sent; a pusher that died between the insert and the sends is completed by
the next call. Everything after the send is the ledger's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DistributedLock,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
    utcnow,
)
from agentrl.rollout.admission import release_budget
from agentrl.rollout.claims import Claim
from agentrl.rollout.ledger import (
    Enqueue,
    GlobalStep,
    RedisKeys,
    open_claims,
    pushed_epoch,
    set_pushed_epoch,
    training_finished,
)

logger = logging.getLogger(__name__)

PUSH_LOCK_TTL_S = 300.0
"""Seconds the push lock lives if its holder dies mid-push."""


def target_epochs(config: AgentTrainingConfig, split: str) -> int:
    """Epochs of ``split`` to push: ``num_train_epochs`` for train, else ``eval_epochs``."""
    return config.num_train_epochs if split == "train" else config.eval_epochs


def generations_for(config: AgentTrainingConfig, split: str) -> int:
    """Trajectories per task: ``num_generations`` for train, ``num_eval_generations`` otherwise."""
    return config.num_generations if split == "train" else config.num_eval_generations


def iter_dataset(dataset: Iterable[Any], limit: int = 0) -> Iterator[tuple[int, Task]]:
    """``(index, task)`` pairs of a torch ``Dataset`` (``__len__``/``__getitem__``), an
    ``IterableDataset`` or any iterable of :class:`Task`.

    Args:
        dataset: the items.
        limit: stop after this many items (0: all).

    Raises:
        TypeError: an item is not a Task (the message names its index).
    """
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        size = len(dataset)  # type: ignore[arg-type]
        items: Iterable[Any] = (dataset[i] for i in range(size))  # type: ignore[index]
    else:
        items = iter(dataset)
    for index, item in enumerate(items):
        if limit and index >= limit:
            return
        if not isinstance(item, Task):
            raise TypeError(
                f"dataset item {index} is a {type(item).__name__}, not a Task: make the "
                "dataset return Task instances (a registered Task subclass)"
            )
        yield index, item


def latest_epoch(dbs: Databases, split: str) -> int:
    """The highest epoch pushed for ``split`` (0 when none)."""
    raw = dbs.store.collection(Task).find_one(
        {"split": split}, {"epoch": 1}, sort=[("epoch", -1)]
    )
    return int(raw["epoch"]) if raw else 0


def epoch_finished(dbs: Databases, split: str, epoch: int) -> bool:
    """Whether every task of ``split``/``epoch`` is COMPLETED (all trajectories scored)."""
    return dbs.store.collection(Task).count_documents(
        {"split": split, "epoch": epoch, "status": {"$ne": TaskStatus.COMPLETED.value}}, limit=1
    ) == 0


def split_done(dbs: Databases, split: str) -> bool:
    """Whether all configured epochs of ``split`` are pushed and finished."""
    epoch = latest_epoch(dbs, split)
    return epoch >= target_epochs(dbs.config, split) and epoch_finished(dbs, split, epoch)


def waiting_ready_records(dbs: Databases) -> int:
    """READY train records not yet trained on."""
    return dbs.store.collection(Record).count_documents(
        {"status": RecordStatus.READY.value, "split": "train", "trained_count": 0}
    )


def bounded(config: AgentTrainingConfig, split: str) -> bool:
    """Whether ``split``'s tasks are released by the staleness budget (train, ``max_staleness``
    set)."""
    return split == "train" and config.max_staleness is not None


def _claims(
    dbs: Databases, split: str, epoch: int, sampler: str, task_ids: list[str] | None = None
) -> list[Claim]:
    """Every claim of the released tasks of ``split``/``epoch`` (or of ``task_ids``) without an
    outcome (from the stored tasks)."""
    claims = []
    query: dict[str, Any] = {"split": split, "epoch": epoch, "released": {"$ne": False}}
    if task_ids is not None:
        query = {"_id": {"$in": task_ids}}
    for raw in dbs.store.collection(Task).find(
        query, {"num_generations": 1, "scores": 1, "failed": 1, "sampler": 1, "epoch": 1},
    ):
        epoch = int(raw.get("epoch", epoch))
        done = set(raw.get("scores") or {}) | set(raw.get("failed") or {})
        name = raw.get("sampler") or sampler
        claims += [
            Claim(raw["_id"], t, epoch, split, name)
            for t in range(int(raw.get("num_generations", 1)))
            if str(t) not in done
        ]
    return claims


def push_epoch(
    dbs: Databases, split: str, dataset: Iterable[Any], sampler: str, enqueue: Enqueue
) -> int | None:
    """Push the next epoch of ``split`` if the current one is finished (see the module doc).

    Args:
        dbs: connections (sync).
        split: dataset split.
        dataset: the Task items (read only when an epoch is pushed).
        sampler: registered sampler name the claims carry.
        enqueue: sends the claims.

    Returns:
        The epoch pushed (or completed after an interrupted push), or ``None`` when nothing was
        pushed (another pusher holds the lock, the epoch is running, all epochs are pushed, or
        too many READY records wait).

    Raises:
        TypeError: a dataset item is not a Task.
    """
    config = dbs.config
    lock = DistributedLock(dbs.redis, RedisKeys(config.key_prefix).lock(f"push_epoch:{split}"),
                           ttl_s=PUSH_LOCK_TTL_S)
    if not lock.acquire(blocking=False):
        return None
    try:
        if bounded(config, split):
            release_tasks(dbs, sampler, enqueue)
        latest = latest_epoch(dbs, split)
        pushed = pushed_epoch(dbs, split)
        if latest > pushed:  # an earlier push died between insert and send
            epoch = latest
        else:
            if latest and not epoch_finished(dbs, split, latest):
                return None
            if latest >= target_epochs(config, split):
                return None
            if split == "train" and training_finished(dbs):
                return None  # the trainer is done: more records would never be trained
            if split == "train" and waiting_ready_records(dbs) > config.max_buffered_records:
                logger.info("not pushing %s epoch %d: too many READY records wait", split,
                            latest + 1)
                return None
            epoch = latest + 1
            _insert_tasks(dbs, split, epoch, dataset, sampler)
        claims = _claims(dbs, split, epoch, sampler)
        open_claims(dbs, claims, enqueue)
        set_pushed_epoch(dbs, split, epoch)
        if bounded(config, split):
            claims += release_tasks(dbs, sampler, enqueue)
        logger.info("pushed %s epoch %d: %d claims", split, epoch, len(claims))
        return epoch
    finally:
        if lock.owned():
            lock.release()


def release_tasks(dbs: Databases, sampler: str, enqueue: Enqueue) -> list[Claim]:
    """Release the next unreleased train tasks (epoch, then dataset order) as the staleness
    budget allows: open their claims, then mark them released at the current step. Nothing is
    released once the trainer is done. The caller holds the split's push lock.

    Returns:
        The claims opened.
    """
    budget = release_budget(dbs)
    if not budget or training_finished(dbs):
        return []
    tasks = dbs.store.collection(Task)
    ids = [raw["_id"] for raw in tasks.find(
        {"split": "train", "released": False}, {"_id": 1},
        sort=[("epoch", 1), ("index", 1)], limit=budget)]
    if not ids:
        return []
    claims = _claims(dbs, "train", 0, sampler, task_ids=ids)
    open_claims(dbs, claims, enqueue)  # sent before marked: a crash between re-sends, never loses
    tasks.update_many({"_id": {"$in": ids}},
                      {"$set": {"released": True, "added_step": GlobalStep(dbs).get(),
                                "updated_at": utcnow()}})
    logger.info("released %d train tasks (%d claims) within max_staleness %d", len(ids),
                len(claims), dbs.config.max_staleness)
    return claims


def _insert_tasks(
    dbs: Databases, split: str, epoch: int, dataset: Iterable[Any], sampler: str
) -> int:
    """Insert the dataset's tasks for ``split``/``epoch`` (bulk, idempotent). Returns the count."""
    config = dbs.config
    limit = config.max_train_tasks if split == "train" else 0
    step = GlobalStep(dbs).get()
    now = utcnow()
    docs = []
    for index, item in iter_dataset(dataset, limit):
        task = item.model_copy(update={
            "id": f"{split}-e{epoch}-{index:06d}",
            "split": split,
            "epoch": epoch,
            "index": index,
            "added_step": step,
            "status": TaskStatus.CREATED,
            "num_generations": generations_for(config, split),
            "sampler": sampler,
            "released": not bounded(config, split),
            "scores": {},
            "created_at": now,
            "updated_at": now,
        })
        docs.append(task)
    return dbs.store.insert_many(docs)  # type: ignore[arg-type]
