"""The guide's custom-task example through SamplingScheduler.run(): in-process worker, a separate
`celery -A agentrl worker`, bad dataset items."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, RecordStatus, Task, TaskStatus
from agentrl.rollout.scheduler import SamplingScheduler
from tests.jobs.helpers import start_celery, stop, wait_for
from tests.jobs.rft_example import RFTDataset, RFTSampler, make_items


def assert_epochs_sampled(dbs: Databases, n_tasks: int, epochs: int, generations: int) -> None:
    """Every task of every epoch has exactly ``generations`` READY/ABANDONED records, with the
    status its scores call for, and is COMPLETED."""
    tasks = list(dbs.store.find(Task, {"split": "train"}))
    assert sorted((t.epoch, t.index) for t in tasks) == [
        (e, i) for e in range(1, epochs + 1) for i in range(n_tasks)
    ]
    for task in tasks:
        assert task.status == TaskStatus.COMPLETED
        assert sorted(task.scores) == [str(t) for t in range(generations)]
        records = list(dbs.store.find(Record, {"task_id": task.id, "epoch": task.epoch}))
        assert sorted(r.traj_id for r in records) == list(range(generations))
        want = RecordStatus.READY if task.index % 2 == 0 else RecordStatus.ABANDONED
        assert {r.status for r in records} == {want}
        for r in records:
            assert r.score == task.scores[str(r.traj_id)]
            assert r.split == "train" and r.epoch == task.epoch and r.attempts == 1
            assert r.meta["answer"] == str(task.index % 2)


def test_guide_example_in_process(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_train_epochs, config.num_generations = 2, 3
    scheduler = SamplingScheduler(
        config=config, sampler_class=RFTSampler, dataset=RFTDataset(make_items(4)),
        split="train", timeout_s=120, start_engine=False,
    )
    assert scheduler.run() == [1, 2]
    assert_epochs_sampled(dbs, n_tasks=4, epochs=2, generations=3)


def test_guide_example_separate_worker(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    config.num_train_epochs, config.num_generations = 2, 2
    worker = start_celery("worker", tmp_path / "worker.log", "-Q", "sampling,evaluation",
                          AGENTRL_NUM_GENERATIONS="2", AGENTRL_NUM_TRAIN_EPOCHS="2")
    try:
        scheduler = SamplingScheduler(
            config=config, sampler_class=RFTSampler, dataset=RFTDataset(make_items(3)),
            split="train", timeout_s=120, start_engine=False,
        )
        wait_for(scheduler.workers_alive, 60, "the worker to answer a ping")
        assert scheduler.run() == [1, 2]
    finally:
        stop(worker)
    assert_epochs_sampled(dbs, n_tasks=3, epochs=2, generations=2)
    log = (tmp_path / "worker.log").read_text()
    assert "agentrl.sample" in log and "succeeded" in log


def test_dataset_item_not_a_task(config: AgentTrainingConfig, dbs: Databases) -> None:
    items = [RFTDataset(make_items(2))[0], {"inputs": [], "target": "1"}]
    scheduler = SamplingScheduler(
        config=config, sampler_class=RFTSampler, dataset=items, in_process_worker=False,
        start_engine=False,
    )
    with pytest.raises(TypeError, match="dataset item 1 is a dict, not a Task"):
        scheduler.run()
