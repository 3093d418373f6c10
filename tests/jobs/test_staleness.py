"""Bounded off-policyness: beat releases train tasks within the ``max_staleness`` budget, and the
trainer drops groups older than it and takes them in ``consume_order``."""

from __future__ import annotations

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, RecordStatus, Task, TaskStatus
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.ledger import GlobalStep, housekeep
from agentrl.training.records import RecordClaimer
from tests.jobs.rft_example import RFTDataset, make_items
from tests.jobs.test_epochs import Collect


def _finish(dbs: Databases, task_id: str, scores: list[float], step: int = 0) -> None:
    """Complete a released task as the ledger would: its records READY (or ABANDONED without
    spread) with ``created_at_step`` ``step``."""
    status = RecordStatus.READY if len(set(scores)) > 1 else RecordStatus.ABANDONED
    task = dbs.store.get(Task, task_id)
    for traj, score in enumerate(scores):
        dbs.store.update(
            Record,
            Record.identity_id(task_id, traj, task.epoch),
            {"status": status.value, "score": score, "created_at_step": step},
        )
    dbs.store.update(
        Task,
        task_id,
        {"status": TaskStatus.COMPLETED.value, "scores": {str(i): s for i, s in enumerate(scores)}},
    )


def _released(dbs: Databases) -> list[str]:
    return sorted(t.id for t in dbs.store.find(Task, {"released": True}))


def test_release_keeps_at_most_max_staleness_plus_one_steps_pending(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    # 2 records per group, 4 per step: G = 2 groups a step; max_staleness 1: 4 groups pending
    config.num_generations, config.train_batch_size, config.max_staleness = 2, 4, 1
    config.num_train_epochs = 2
    dataset, sent = RFTDataset(make_items(5)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    assert dbs.store.collection(Task).count_documents({}) == 5  # the whole epoch is stored
    assert _released(dbs) == [f"train-e1-00000{i}" for i in range(4)]
    assert len(sent.claims) == 8 and dbs.store.collection(Record).count_documents({}) == 8
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None and len(sent.claims) == 8

    # sampled groups waiting READY are still pending: nothing more is sampled
    for i in range(3):
        _finish(dbs, f"train-e1-00000{i}", [1.0, 0.0])
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert len(sent.claims) == 8
    # a group without spread will never be trained: the next task takes its place
    _finish(dbs, "train-e1-000003", [1.0, 1.0])
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert _released(dbs)[-1] == "train-e1-000004" and len(sent.claims) == 10

    # the step in training holds two groups: still pending until the step is published
    claimer = RecordClaimer(config, dbs)
    groups = claimer.claim(1, 4)
    assert len(groups) == 2
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert len(sent.claims) == 10
    GlobalStep(dbs).set(1)
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None  # epoch 1 not finished
    _finish(dbs, "train-e1-000004", [0.0, 1.0], step=1)
    # epoch 1 done: epoch 2 is pushed unreleased and released up to the budget (2 pending)
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 2
    assert dbs.store.collection(Task).count_documents({"epoch": 2}) == 5
    assert [t for t in _released(dbs) if "-e2-" in t] == ["train-e2-000000", "train-e2-000001"]
    assert dbs.store.get(Task, "train-e2-000000").added_step == 1
    # unreleased tasks are no claims to rebuild: housekeeping sends none of them
    dbs.redis.delete(f"{config.key_prefix}:alive")
    assert len(sent.claims) == 14
    housekeep(dbs, sent)
    assert {c.task_id for c in sent.claims[14:]} <= {"train-e2-000000", "train-e2-000001"}


def test_synchronous_release_samples_one_batch_per_step(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.num_generations, config.train_batch_size, config.max_staleness = 2, 2, 0
    dataset, sent = RFTDataset(make_items(3)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    assert _released(dbs) == ["train-e1-000000"]
    _finish(dbs, "train-e1-000000", [1.0, 0.0])
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert _released(dbs) == ["train-e1-000000"]  # its group waits for the trainer
    RecordClaimer(config, dbs).claim(1, 2)
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert _released(dbs) == ["train-e1-000000"]  # in training with the weights of step 0
    GlobalStep(dbs).set(1)
    push_epoch(dbs, "train", dataset, "rft", sent)
    assert _released(dbs) == ["train-e1-000000", "train-e1-000001"]


def _ready_group(dbs: Databases, task_id: str, step: int) -> None:
    for traj, score in enumerate([1.0, 0.0]):
        dbs.store.insert(
            Record(
                _id=Record.identity_id(task_id, traj, 1),
                task_id=task_id,
                traj_id=traj,
                epoch=1,
                status=RecordStatus.READY,
                score=score,
                created_at_step=step,
            )
        )


def test_groups_older_than_max_staleness_are_dropped_and_counted(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.max_staleness = 1
    for task_id, step in (("a", 0), ("b", 1), ("c", 2), ("d", 3)):
        _ready_group(dbs, task_id, step)
    claimer = RecordClaimer(config, dbs)
    # step 4 trains from the weights of step 3: groups sampled before step 2 are too old
    groups = claimer.claim(4, 2)
    assert [g.task_id for g in groups] == ["d"]  # fresh: the newest first
    assert claimer.dropped_stale == 4
    stale = list(dbs.store.find(Record, {"status": RecordStatus.STALE.value}))
    assert sorted(r.task_id for r in stale) == ["a", "a", "b", "b"]
    assert {r.trained_count for r in stale} == {0}
    assert [g.task_id for g in claimer.claim(4, 2)] == ["c"]
    assert claimer.claim(4, 2) == [] and claimer.dropped_stale == 4


def test_fifo_takes_the_oldest_group_first(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.consume_order = "fifo"
    for task_id, step in (("b", 1), ("a", 0), ("c", 2)):
        _ready_group(dbs, task_id, step)
    claimer = RecordClaimer(config, dbs)
    assert [g.task_id for g in claimer.claim(3, 4)] == ["a", "b"]
    assert claimer.dropped_stale == 0  # no max_staleness: nothing is dropped
