"""`agentrl status` reports the staleness of the READY records still to be trained."""

from __future__ import annotations

from agentrl.databases import Databases, Record, RecordStatus
from agentrl.status import ready_staleness


def test_staleness_is_of_the_untrained_ready_records(dbs: Databases) -> None:
    for traj, (created, trained) in enumerate([(0, 1), (1, 1), (6, 0), (7, 0), (7, 0)]):
        dbs.store.insert(Record(
            _id=Record.identity_id("t", traj, 1), task_id="t", traj_id=traj, epoch=1,
            status=RecordStatus.READY, created_at_step=created, trained_count=trained,
        ))
    assert ready_staleness(dbs, global_step=8) == {
        "ready": 5, "untrained": 3, "max_steps": 2, "mean_steps": 1.333, "min_steps": 1,
    }
