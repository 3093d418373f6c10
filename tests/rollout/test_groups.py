"""Housekeeping completes a group whose last member scored but died before completing it."""

from __future__ import annotations

from agentrl.databases import Databases, Record, RecordStatus, Task, TaskStatus
from agentrl.rollout.ledger import housekeep


def _task(dbs: Databases, task_id: str, epoch: int, scores: dict, failed: dict) -> None:
    dbs.store.collection(Task).insert_one({
        "_id": task_id, "split": "train", "epoch": epoch, "num_generations": 4,
        "status": TaskStatus.RUNNING.value, "scores": scores, "failed": failed,
    })


def _record(dbs: Databases, task_id: str, traj_id: int, epoch: int, status: RecordStatus) -> str:
    record_id = Record.identity_id(task_id, traj_id, epoch)
    dbs.store.collection(Record).insert_one({
        "_id": record_id, "task_id": task_id, "traj_id": traj_id, "epoch": epoch,
        "split": "train", "status": status.value,
    })
    return record_id


def test_housekeeping_completes_a_stuck_group_and_only_its_own_records(dbs: Databases) -> None:
    scored = [_record(dbs, "t1", i, 3, RecordStatus.SCORED) for i in range(3)]
    failed = _record(dbs, "t1", 3, 3, RecordStatus.FAILED)
    other_epoch = _record(dbs, "t1", 0, 2, RecordStatus.SCORED)
    _task(dbs, "t1", 3, scores={"0": 1.0, "1": 0.0, "2": 1.0}, failed={"3": "sampler"})
    waiting = [_record(dbs, "t2", i, 3, RecordStatus.SCORED) for i in range(2)]
    _task(dbs, "t2", 3, scores={"0": 1.0, "1": 0.0}, failed={})

    done = housekeep(dbs, enqueue=lambda claims: None)

    assert done.groups_completed == 1
    status = {r["_id"]: r["status"] for r in dbs.store.collection(Record).find({})}
    assert [status[r] for r in scored] == [RecordStatus.READY.value] * 3
    assert status[failed] == RecordStatus.FAILED.value
    assert status[other_epoch] == RecordStatus.SCORED.value  # another epoch's group
    assert [status[r] for r in waiting] == [RecordStatus.SCORED.value] * 2  # incomplete
    tasks = {t["_id"]: t["status"] for t in dbs.store.collection(Task).find({})}
    assert tasks == {"t1": TaskStatus.COMPLETED.value, "t2": TaskStatus.RUNNING.value}
