"""Helpers of the fault drills: a stub inference service the workers call, the workers' settings,
and the checks every drill ends with (one Record per identity, each one's calls from its own
attempt, every group complete)."""

from __future__ import annotations

import json
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    FINAL_RECORD_STATUSES,
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    Record,
    RecordStatus,
    Task,
    TaskStatus,
)
from agentrl.inference.services import register_service
from tests.inference.stub_server import StubServer
from tests.jobs.fault_sampler import FaultTask

FAULT_MODULE = "tests.jobs.fault_sampler"
"""The module the drills' workers import (it registers the ``fault`` sampler and FaultTask)."""


def drill_env(
    config: AgentTrainingConfig, tasks: list[dict[str, Any]], **extra: str
) -> dict[str, str]:
    """``AGENTRL_*`` settings of the workers and beat of a drill: the ``fault`` sampler on
    ``tasks``, short leases and heartbeats, fast beat and housekeeping."""
    env = {
        "AGENTRL_SAMPLER": "fault", "AGENTRL_SAMPLER_MODULES": FAULT_MODULE,
        "FAULT_TASKS": json.dumps(tasks), "AGENTRL_NUM_GENERATIONS": "2",
        "AGENTRL_LEASE_TTL_S": "4", "AGENTRL_HEARTBEAT_INTERVAL_S": "1",
        "AGENTRL_HOUSEKEEPING_INTERVAL_S": "1", "AGENTRL_BEAT_INTERVAL_S": "1",
        "AGENTRL_INFRASTRUCTURE_RETRY_BACKOFF_S": "1", "AGENTRL_REQUEST_TIMEOUT_S": "5",
        "AGENTRL_CIRCUIT_OPEN_S": "0.5",
    }
    env.update(extra)
    return env


def register_stub(dbs: Databases, stub: StubServer, config: AgentTrainingConfig) -> None:
    """The stub as an SGLang node registered with ``agentrl services add`` (no heartbeat)."""
    register_service(dbs.store, stub.url("llm"), config.model_name, kind="sglang")


def records(dbs: Databases) -> list[Record]:
    """Every Record of the run."""
    return list(dbs.store.find(Record, {}))


def count(dbs: Databases, **query: Any) -> int:
    """Records matching ``query`` (status values as strings)."""
    return dbs.store.collection(Record).count_documents(query)


def epoch_finished(dbs: Databases, n_tasks: int) -> bool:
    """Whether ``n_tasks`` tasks exist and every one is COMPLETED."""
    tasks = dbs.store.collection(Task)
    return tasks.count_documents({}) == n_tasks and tasks.count_documents(
        {"status": {"$ne": TaskStatus.COMPLETED.value}}) == 0


def own_calls(dbs: Databases, record: Record) -> list[DispatchedSamplingTask]:
    """The calls of the Record's own attempt, in turn order."""
    calls = dbs.store.find(DispatchedSamplingTask,
                           {"record_id": record.id, "attempt": record.attempt})
    return sorted(calls, key=lambda c: c.turn)


def assert_consistent(dbs: Databases, n_tasks: int, generations: int, calls: int = 2) -> None:
    """The end state every drill must reach.

    Every task COMPLETED with one outcome per trajectory; exactly one final Record per
    ``(task_id, traj_id, epoch)``; each scored Record has ``calls`` completed calls, all of its
    own attempt and turns ``0..calls-1``, answered with the stub's text; no scored Record carries
    an error; the group statuses follow the scores.
    """
    tasks = list(dbs.store.find(Task, {}))
    assert len(tasks) == n_tasks and all(isinstance(t, FaultTask) for t in tasks)
    by_id = {r.id: r for r in records(dbs)}
    assert len(by_id) == n_tasks * generations
    for task in tasks:
        assert task.status == TaskStatus.COMPLETED, task.id
        assert sorted(set(task.scores) | set(task.failed)) == [
            str(t) for t in range(generations)]
        for traj_id in range(generations):
            record = by_id[Record.identity_id(task.id, traj_id, task.epoch)]
            assert record.status.value in FINAL_RECORD_STATUSES, record
            if record.status == RecordStatus.FAILED:
                assert str(traj_id) in task.failed and record.error
                continue
            assert task.scores[str(traj_id)] == record.score
            assert record.error is None and record.error_kind is None
            own = own_calls(dbs, record)
            assert [c.turn for c in own] == list(range(calls)), (record.id, own)
            assert {c.status for c in own} == {DispatchStatus.COMPLETED}
            assert record.meta["answers"] == [c.response["choices"][0]["message"]["content"]
                                              for c in own]
