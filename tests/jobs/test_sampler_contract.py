"""The sampler API's contract: StatefulSampler runs a task's trajectories one at a time on shared
state; a failing run or evaluation is started again, then FAILED and left out of its group;
no task → error."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, ErrorKind, Record, RecordStatus, Task, TaskStatus
from agentrl.errors import NoTaskAvailableError
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.scheduler import SamplingScheduler
from tests.jobs.rft_example import RFTDataset, RFTSampler, make_items
from tests.jobs.stateful_example import CountingStatefulSampler, FlakySampler


def test_stateful_sampler_shares_state_one_at_a_time(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.num_generations = 3
    SamplingScheduler(config=config, sampler_class=CountingStatefulSampler,
                      dataset=RFTDataset(make_items(2)), timeout_s=120, start_engine=False).run()
    for task in dbs.store.find(Task, {}):
        assert task.status == TaskStatus.COMPLETED
        assert sorted(task.state["seen"]) == [0, 1, 2]
        assert task.state["overlap"] is False
        records = list(dbs.store.find(Record, {"task_id": task.id}))
        assert sorted(r.meta["seen_before"] for r in records) == [0, 1, 2]
        assert {r.status for r in records} == {RecordStatus.READY}


def test_failed_run_is_resampled_and_failing_evaluation_leaves_the_group(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.num_generations, config.housekeeping_interval_s = 3, 1.0
    SamplingScheduler(config=config, sampler_class=FlakySampler,
                      dataset=RFTDataset(make_items(1)), timeout_s=120,
                      start_engine=False).run()
    records = {r.traj_id: r for r in dbs.store.find(Record, {})}
    assert records[0].attempt == 2 and records[0].score == 1.0
    assert records[0].error is None  # the successful second attempt replaced the failed one
    assert records[0].status == RecordStatus.READY
    # an exception in evaluate_record is the sampler's failure: retried, then FAILED, never 0
    failed = records[1]
    assert failed.status == RecordStatus.FAILED and failed.score is None
    assert failed.error_kind == ErrorKind.SAMPLER and "grader exploded" in failed.error
    assert failed.attempt == config.max_sample_attempts
    assert records[2].score == 0.0 and records[2].attempt == 1
    assert records[2].status == RecordStatus.READY
    (task,) = dbs.store.find(Task, {})
    assert task.status == TaskStatus.COMPLETED
    assert task.scores == {"0": 1.0, "2": 0.0} and task.failed == {"1": "sampler"}


def test_no_task_available(config: AgentTrainingConfig, dbs: Databases) -> None:
    async def claim() -> None:
        async with RFTSampler(config) as sampler:
            await sampler.run()

    with pytest.raises(NoTaskAvailableError):
        asyncio.run(claim())


def test_standalone_sampler_claims_and_scores(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_generations = 2
    assert push_epoch(dbs, "train", RFTDataset(make_items(1)), "rft", lambda claims: None) == 1

    async def sample_all() -> None:
        for _ in range(2):
            async with RFTSampler(config) as sampler:
                await sampler.run()

    asyncio.run(sample_all())
    (task,) = dbs.store.find(Task, {})
    assert task.status == TaskStatus.COMPLETED and task.scores == {"0": 0.0, "1": 1.0}
    assert dbs.store.collection(Record).count_documents({"status": "ready"}) == 2
