"""Trajectories that fail by themselves, through SamplingScheduler's in-process worker: an
exception in ``run`` or ``evaluate_record``, numpy values, a 20 MB value and an unstorable one in
``meta``, aborted replies. Failures are classified and retried up to ``max_sample_attempts``;
a FAILED trajectory leaves its group, which completes from the rest; the epoch finishes."""

from __future__ import annotations

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    ErrorKind,
    RecordStatus,
    Task,
)
from agentrl.databases.objectstore import internalize, is_ref
from agentrl.rollout.scheduler import SamplingScheduler
from tests.inference.stub_server import StubServer
from tests.jobs.drills import assert_consistent, own_calls, records
from tests.jobs.fault_sampler import FaultSampler, FaultTask

MODES = ["ok", "raise_run", "raise_eval", "numpy", "big", "unstorable"]


def test_failures_are_classified_and_the_epoch_finishes(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    stub.delay_s = 0.0
    config.num_generations, config.max_sample_attempts = 3, 2
    config.housekeeping_interval_s = 1.0
    stub.abort["llm"] = 2  # the first two replies are interrupted: retried, never stored
    tasks = [FaultTask(mode=mode, poison_traj=0) for mode in MODES]
    SamplingScheduler(config=config, sampler_class=FaultSampler, dataset=tasks,
                      timeout_s=300).run()

    assert_consistent(dbs, n_tasks=len(MODES), generations=3)
    by_mode = {}
    for task in dbs.store.find(Task, {}):
        by_mode[task.mode] = {r.traj_id: r for r in records(dbs) if r.task_id == task.id}
        assert task.status.value == "completed"
    for mode, group in by_mode.items():  # the other trajectories are scored, with spread
        assert [group[t].status for t in (1, 2)] == [RecordStatus.READY] * 2, mode
        assert [group[t].score for t in (1, 2)] == [1.0, 0.0]

    for mode in ("raise_run", "raise_eval"):
        failed = by_mode[mode][0]
        assert failed.status == RecordStatus.FAILED and failed.score is None
        assert failed.error_kind == ErrorKind.SAMPLER and failed.attempt == 2
    assert "the environment crashed" in by_mode["raise_run"][0].error
    assert "the grader exploded" in by_mode["raise_eval"][0].error

    unstorable = by_mode["unstorable"][0]
    assert unstorable.status == RecordStatus.FAILED
    assert unstorable.error_kind == ErrorKind.INVALID_OUTPUT
    assert "meta.result.handle" in unstorable.error and "object" in unstorable.error

    numpy_record = by_mode["numpy"][0]  # stored as plain numbers and lists
    assert numpy_record.status == RecordStatus.READY
    assert numpy_record.meta["stats"] == {"steps": 3, "reward": 0.5, "done": True,
                                          "trace": [0.0, 1.5, 3.0, 4.5]}
    assert type(numpy_record.meta["stats"]["steps"]) is int

    big = by_mode["big"][0]  # the 20 MB value went to the object store
    assert big.status == RecordStatus.READY and is_ref(big.meta["transcript"])
    assert big.meta["transcript"]["bytes"] == 20_000_000
    assert internalize(big.meta, dbs.objects)["transcript"] == "x" * 20_000_000

    finish = {c.finish_reason for r in records(dbs) for c in own_calls(dbs, r)}
    assert "abort" not in finish and finish <= {"stop", "length"}
    aborted = dbs.store.collection(DispatchedSamplingTask).count_documents(
        {"finish_reason": "abort"})
    assert aborted == 0
