"""The trainer's per-step rollout rates count finished records, as the sampler reported them."""

from __future__ import annotations

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, RecordStatus
from agentrl.rollout.outcomes import CORRECT, METRICS_KEY, WELL_FORMED
from agentrl.training.records import RecordClaimer, RolloutCounts


def _record(task: str, traj: int, status: RecordStatus, metrics: dict | None) -> Record:
    return Record(
        _id=Record.identity_id(task, traj, 1), task_id=task, traj_id=traj, epoch=1,
        status=status, score=0.0, meta={METRICS_KEY: metrics} if metrics is not None else {},
    )


def test_counts_are_of_finished_records_that_report_metrics(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    records = [
        _record("a", 0, RecordStatus.READY, {CORRECT: True, WELL_FORMED: True}),
        _record("a", 1, RecordStatus.READY, {CORRECT: False, WELL_FORMED: True}),
        _record("b", 0, RecordStatus.ABANDONED, {CORRECT: False, WELL_FORMED: False}),
        _record("c", 0, RecordStatus.STALE, {CORRECT: False, WELL_FORMED: True}),
        _record("d", 0, RecordStatus.READY, None),  # its sampler reports nothing
        _record("e", 0, RecordStatus.SCORED, {CORRECT: True, WELL_FORMED: True}),  # unfinished
        _record("f", 0, RecordStatus.FAILED, {CORRECT: True, WELL_FORMED: True}),  # left group
    ]
    for record in records:
        dbs.store.insert(record)
    counts = RecordClaimer(config, dbs).rollout_counts()
    assert counts == RolloutCounts(finished=5, reported=4, correct=1, well_formed=3)
