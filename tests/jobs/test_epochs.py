"""push_epoch's rules and housekeeping, with claims collected instead of sent; admission."""

from __future__ import annotations

import asyncio
import json

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    InferenceService,
    Record,
    RecordStatus,
    ServiceStatus,
    Task,
    TaskStatus,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.epochs import push_epoch, pushed_key, requeue_expired
from agentrl.rollout.leases import inflight_key, lease_key
from agentrl.rollout.sampler import SamplerContext
from tests.jobs.rft_example import RFTDataset, make_items
from workers.runtime import Admission


class Collect:
    def __init__(self) -> None:
        self.claims: list[Claim] = []

    def __call__(self, claims: list[Claim]) -> None:
        self.claims += claims


def complete_all(dbs: Databases) -> None:
    dbs.store.collection(Task).update_many({}, {"$set": {"status": TaskStatus.COMPLETED.value}})


def test_push_rules(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_generations, config.num_train_epochs = 3, 2
    dataset, sent = RFTDataset(make_items(4)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    assert len(sent.claims) == 12 and {c.sampler for c in sent.claims} == {"rft"}
    assert sorted({(c.task_id, c.traj_id) for c in sent.claims})[:3] == [
        ("train-e1-000000", 0), ("train-e1-000000", 1), ("train-e1-000000", 2)]
    task = dbs.store.get(Task, "train-e1-000000")
    assert (task.split, task.epoch, task.index, task.num_generations, task.status) == (
        "train", 1, 0, 3, TaskStatus.CREATED)
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None  # epoch 1 still running
    complete_all(dbs)
    dbs.global_step.set(7)
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 2
    assert dbs.store.get(Task, "train-e2-000003").added_step == 7
    complete_all(dbs)
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None  # num_train_epochs reached
    assert len(sent.claims) == 24


def test_eval_split_one_generation(config: AgentTrainingConfig, dbs: Databases) -> None:
    sent = Collect()
    assert push_epoch(dbs, "eval", RFTDataset(make_items(3)), "rft", sent) == 1
    assert [(c.split, c.traj_id) for c in sent.claims] == [("eval", 0)] * 3


def test_stops_while_too_many_ready_records_wait(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.max_buffered_records, config.num_train_epochs = 2, 2
    dataset, sent = RFTDataset(make_items(1)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    complete_all(dbs)
    for traj in range(3):
        dbs.store.insert(Record(task_id="train-e1-000000", traj_id=traj, epoch=1,
                                status=RecordStatus.READY))
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None
    dbs.store.collection(Record).update_one({}, {"$set": {"trained_count": 1}})
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 2


def test_interrupted_push_is_completed(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_generations = 2
    dataset, sent = RFTDataset(make_items(2)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    dbs.redis.delete(pushed_key(config.key_prefix, "train"))  # as if the sends never happened
    dbs.store.collection(Task).update_one({"_id": "train-e1-000000"},
                                          {"$set": {"scores": {"0": 1.0}}})
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    assert [(c.task_id, c.traj_id) for c in sent.claims[4:]] == [
        ("train-e1-000000", 1), ("train-e1-000001", 0), ("train-e1-000001", 1)]
    assert dbs.store.collection(Task).count_documents({}) == 2


def test_housekeeping_resends_only_expired_leases(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    prefix, sent = config.key_prefix, Collect()
    live, dead = Claim("t", 0, 1, "train", "rft"), Claim("t", 1, 1, "train", "rft")
    for claim in (live, dead):
        dbs.redis.hset(inflight_key(prefix), claim.record_id, json.dumps(claim.to_json()))
    dbs.redis.set(lease_key(prefix, live.record_id), "token", ex=60)
    assert requeue_expired(dbs, sent) == 1
    assert sent.claims == [dead]
    assert dbs.redis.hkeys(inflight_key(prefix)) == [live.record_id]
    assert requeue_expired(dbs, sent) == 0


def test_admission_waits_for_service_capacity(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.target_concurrency = 2
    service = InferenceService(name="s0", endpoint="http://127.0.0.1:1", models=["m"],
                               status=ServiceStatus.UP, running_req_count=2)
    dbs.store.insert(service)

    async def scenario() -> tuple[bool, bool]:
        context = SamplerContext.open(config)
        admission = Admission(context)
        waiter = asyncio.ensure_future(admission.wait())
        await asyncio.sleep(1.5)
        blocked = not waiter.done()
        await context.store.collection(InferenceService).update_one(
            {"_id": service.id}, {"$set": {"running_req_count": 1}})
        await asyncio.wait_for(waiter, 5)
        await context.aclose()
        return blocked, waiter.done()

    assert asyncio.run(scenario()) == (True, True)
