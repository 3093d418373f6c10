"""Claims and group bookkeeping: what one sampling message names, and what a finished
trajectory writes.

A :class:`Claim` is the JSON body of one sampling message: ``(task_id, traj_id, epoch)`` (the
Record identity), the split, and the registered sampler name. Finishing a trajectory costs few
MongoDB operations (nx-27017 does a few hundred atomic updates per second):

1. :func:`write_record` — one upsert of the Record by its identity id (never a second Record);
2. :func:`push_score` — one ``find_one_and_update`` that sets ``scores.<traj_id>`` in the task
   (a map, so a redelivery overwrites instead of duplicating);
3. once per group, :func:`complete_group` — one ``update_many`` marking the group READY (or
   ABANDONED when the scores have no spread) and one update marking the task COMPLETED.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pymongo import ReturnDocument

from agentrl.databases import AsyncMongoStore, Record, RecordStatus, Task, TaskStatus, utcnow

SCORE_SPREAD_EPS = 1e-6
"""Scores closer than this are the same score (a group with no spread is ABANDONED)."""

FINISHED_RECORD_STATUSES = (RecordStatus.SCORED, RecordStatus.READY, RecordStatus.ABANDONED)
"""Record statuses after which a trajectory is never run again."""


@dataclass(frozen=True)
class Claim:
    """One trajectory to sample: the body of a sampling message (JSON).

    Attributes:
        task_id: the Task's id.
        traj_id: 0-based trajectory index within the task's group.
        epoch: the epoch the task was pushed for.
        split: the dataset split.
        sampler: the registered sampler name.
    """

    task_id: str
    traj_id: int
    epoch: int
    split: str = "train"
    sampler: str = ""

    @property
    def record_id(self) -> str:
        """The deterministic Record id of this claim's identity."""
        return Record.identity_id(self.task_id, self.traj_id, self.epoch)

    def to_json(self) -> dict[str, Any]:
        """The claim as a JSON-able dict (a message's kwargs)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Claim:
        """Build a claim from a message's kwargs.

        Raises:
            TypeError: a field is missing or unknown.
        """
        return cls(
            task_id=str(data["task_id"]),
            traj_id=int(data["traj_id"]),
            epoch=int(data["epoch"]),
            split=str(data.get("split", "train")),
            sampler=str(data.get("sampler", "")),
        )


async def start_task(store: AsyncMongoStore, task_id: str) -> dict[str, Any] | None:
    """Mark a task RUNNING (if it was CREATED) and return its stored document (one operation).

    Returns:
        The raw task document, or ``None`` when no such task exists.
    """
    raw = await store.collection(Task).find_one_and_update(
        {"_id": task_id, "status": TaskStatus.CREATED.value},
        {"$set": {"status": TaskStatus.RUNNING.value, "updated_at": utcnow()}},
        return_document=ReturnDocument.AFTER,
    )
    if raw is None:
        raw = await store.collection(Task).find_one({"_id": task_id})
    return raw


async def write_record(store: AsyncMongoStore, record: Record) -> None:
    """Upsert ``record`` by its identity id (one operation; a redelivery overwrites it)."""
    record.updated_at = utcnow()
    doc = record.to_mongo()
    await store.collection(Record).replace_one({"_id": doc["_id"]}, doc, upsert=True)


async def push_score(
    store: AsyncMongoStore, task_id: str, traj_id: int, score: float
) -> dict[str, Any] | None:
    """Set the task's ``scores[str(traj_id)]`` (idempotent) and return the task after it.

    Returns:
        The raw task document after the update (``scores``, ``num_generations``, ``status``...),
        or ``None`` when the task does not exist.
    """
    return await store.collection(Task).find_one_and_update(
        {"_id": task_id},
        {"$set": {f"scores.{traj_id}": float(score), "updated_at": utcnow()}},
        return_document=ReturnDocument.AFTER,
    )


def group_status(scores: list[float], split: str) -> RecordStatus:
    """READY when the group carries a GRPO signal, ABANDONED when its scores have no spread.

    Splits other than ``train`` are never trained on, so their records are READY (for
    evaluation readers) whatever the spread.
    """
    if split != "train" or (scores and max(scores) - min(scores) > SCORE_SPREAD_EPS):
        return RecordStatus.READY
    return RecordStatus.ABANDONED


async def complete_group(store: AsyncMongoStore, task: dict[str, Any]) -> RecordStatus | None:
    """When every trajectory of the task's group is scored, mark the group and the task done.

    Args:
        task: the raw task document returned by :func:`push_score`.

    Returns:
        The group's final status, or ``None`` while some trajectories are still unscored.
    """
    scores = [float(v) for v in (task.get("scores") or {}).values()]
    if len(scores) < int(task.get("num_generations", 1)):
        return None
    status = group_status(scores, str(task.get("split", "train")))
    now = utcnow()
    await store.collection(Record).update_many(
        {"task_id": task["_id"], "epoch": task.get("epoch", 0),
         "status": RecordStatus.SCORED.value},
        {"$set": {"status": status.value, "updated_at": now}},
    )
    if task.get("status") != TaskStatus.COMPLETED.value:
        await store.collection(Task).update_one(
            {"_id": task["_id"]},
            {"$set": {"status": TaskStatus.COMPLETED.value, "updated_at": now}},
        )
    return status
