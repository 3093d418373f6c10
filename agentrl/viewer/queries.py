"""The viewer's read-only MongoDB queries: records by split/epoch/status, one record, its calls.

Documents are read raw (plain dicts), not validated into their classes: the viewer shows any
record, whatever sampler or task subclass wrote it and whichever optional fields
(``attempt``, ``error_kind``, ``prompt_token_ids``...) the writing version had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrl.databases import Databases, DispatchedSamplingTask, Record, Task

RECORD_LIST_FIELDS = (
    "task_id", "traj_id", "epoch", "split", "status", "score", "advantage", "attempts",
    "attempt", "error", "error_kind", "created_at_step", "trained_count", "last_trained_step",
)
"""Record fields the records table shows (``meta`` is left out: it can be large)."""


@dataclass(frozen=True)
class RecordFilter:
    """Which records the table lists.

    Attributes:
        split: only this split (``""``: any).
        epoch: only this epoch (``None``: any).
        status: only this status (``""``: any).
        errors_only: only records with an ``error``.
    """

    split: str = ""
    epoch: int | None = None
    status: str = ""
    errors_only: bool = False

    def query(self) -> dict[str, Any]:
        """The MongoDB filter."""
        query: dict[str, Any] = {}
        if self.split:
            query["split"] = self.split
        if self.epoch is not None:
            query["epoch"] = self.epoch
        if self.status:
            query["status"] = self.status
        if self.errors_only:
            query["error"] = {"$nin": [None, ""]}
        return query


def filter_choices(dbs: Databases) -> dict[str, list[Any]]:
    """The splits and epochs the records have (``splits``, ``epochs``), for the filters."""
    coll = dbs.store.collection(Record)
    return {
        "splits": sorted(str(s) for s in coll.distinct("split")),
        "epochs": sorted(int(e) for e in coll.distinct("epoch")),
    }


def list_records(
    dbs: Databases, where: RecordFilter, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of records matching ``where``, newest epoch first, then by task and traj id.

    Args:
        dbs: connections.
        where: the filter.
        limit: records per page.
        offset: records skipped.

    Returns:
        (rows with ``_id`` and :data:`RECORD_LIST_FIELDS`, total matching).
    """
    coll = dbs.store.collection(Record)
    query = where.query()
    cursor = coll.find(query, dict.fromkeys(RECORD_LIST_FIELDS, 1)).sort(
        [("epoch", -1), ("task_id", 1), ("traj_id", 1)]
    ).skip(offset).limit(limit)
    return list(cursor), coll.count_documents(query)


def get_record(dbs: Databases, record_id: str) -> dict[str, Any] | None:
    """The stored Record ``record_id``, or ``None``."""
    return dbs.store.collection(Record).find_one({"_id": record_id})


def get_task(dbs: Databases, task_id: str) -> dict[str, Any] | None:
    """The stored Task ``task_id``, or ``None``."""
    return dbs.store.collection(Task).find_one({"_id": task_id})


def record_calls(dbs: Databases, record_id: str) -> list[dict[str, Any]]:
    """The LLM calls (DispatchedSamplingTask) of a record, by turn and creation time."""
    calls = dbs.store.collection(DispatchedSamplingTask).find({"record_id": record_id})
    return sorted(calls, key=lambda c: (c.get("turn", 0), str(c.get("created_at", ""))))


def call_token_ids(dbs: Databases, call_id: str) -> list[int] | None:
    """The sampled token ids of call ``call_id``, or ``None`` when there is no such call."""
    raw = dbs.store.collection(DispatchedSamplingTask).find_one(
        {"_id": call_id}, {"completion_token_ids": 1}
    )
    return None if raw is None else [int(t) for t in raw.get("completion_token_ids") or []]
