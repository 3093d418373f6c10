"""push_epoch's rules and housekeeping, with claims collected instead of sent; admission."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    RUN_STATE_ID,
    Databases,
    InferenceService,
    Record,
    RecordStatus,
    RunState,
    ServiceStatus,
    Task,
    TaskStatus,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.ledger import GlobalStep, RedisKeys, housekeep
from agentrl.rollout.runtime import Admission
from agentrl.rollout.sampler import SamplerContext
from tests.jobs.rft_example import RFTDataset, make_items


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
    # every claim is a Record from the start, queued: visible before any worker takes it
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 12 and {r.status for r in records} == {RecordStatus.CREATED}
    assert {r.sampler for r in records} == {"rft"} and {r.attempt for r in records} == {0}
    assert sorted({(c.task_id, c.traj_id) for c in sent.claims})[:3] == [
        ("train-e1-000000", 0), ("train-e1-000000", 1), ("train-e1-000000", 2)]
    task = dbs.store.get(Task, "train-e1-000000")
    assert (task.split, task.epoch, task.index, task.num_generations, task.status) == (
        "train", 1, 0, 3, TaskStatus.CREATED)
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None  # epoch 1 still running
    complete_all(dbs)
    GlobalStep(dbs).set(7)
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
    for traj in range(3):  # the push created the records; three of them became READY
        dbs.store.update(Record, Record.identity_id("train-e1-000000", traj, 1),
                         {"status": RecordStatus.READY.value})
    assert push_epoch(dbs, "train", dataset, "rft", sent) is None
    dbs.store.collection(Record).update_one({}, {"$set": {"trained_count": 1}})
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 2


def test_interrupted_push_is_completed(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.num_generations = 2
    dataset, sent = RFTDataset(make_items(2)), Collect()
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    dbs.store.collection(RunState).update_one(  # as if the sends never happened
        {"_id": RUN_STATE_ID}, {"$set": {"pushed_epochs": {}}})
    dbs.store.collection(Task).update_one({"_id": "train-e1-000000"},
                                          {"$set": {"scores": {"0": 1.0}}})
    dbs.store.collection(Task).update_one({"_id": "train-e1-000001"},
                                          {"$set": {"failed": {"0": "sampler"}}})
    assert push_epoch(dbs, "train", dataset, "rft", sent) == 1
    assert [(c.task_id, c.traj_id) for c in sent.claims[4:]] == [
        ("train-e1-000000", 1), ("train-e1-000001", 1)]
    assert dbs.store.collection(Task).count_documents({}) == 2


def test_housekeeping_resends_only_lapsed_leases_and_due_retries(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    keys, sent = RedisKeys(config.key_prefix).trajectories, Collect()
    live, dead, due, later = (Claim("t", i, 1, "train", "rft") for i in range(4))
    now_ms = time.time() * 1000
    for claim, expiry_ms, owner in ((live, now_ms + 60_000, "w1"), (dead, now_ms - 1, "w2"),
                                    (due, now_ms - 1, None), (later, now_ms + 60_000, None)):
        dbs.redis.zadd(keys.leases, {claim.record_id: expiry_ms})
        dbs.redis.hset(keys.payloads, claim.record_id, json.dumps(claim.to_json()))
        if owner:
            dbs.redis.hset(keys.owners, claim.record_id, owner)
    dbs.redis.set(RedisKeys(config.key_prefix).alive, "1")
    with caplog.at_level(logging.INFO, logger="agentrl.rollout.ledger.run"):
        assert housekeep(dbs, sent).resent == 2
    assert sorted(c.traj_id for c in sent.claims) == [1, 2]
    # the dead worker's lease is a warning; the hand-back due for a retry is routine
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "re-sending 1 claims whose leases lapsed"),
        (logging.INFO, "re-sending 1 claims handed back for a retry"),
    ]
    assert sorted(dbs.redis.zrange(keys.leases, 0, -1)) == sorted(
        [live.record_id, later.record_id])
    assert dbs.redis.hkeys(keys.owners) == [live.record_id]
    assert housekeep(dbs, sent).resent == 0


def test_admission_waits_for_service_capacity(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.target_concurrency = 2
    service = InferenceService(name="s0", endpoint="http://127.0.0.1:1",
                               models=[config.model_name], status=ServiceStatus.UP)
    dbs.store.insert(service)
    slots = RedisKeys(config.key_prefix).service_slots(service.id)
    dbs.redis.zadd(slots, {"r1": time.time() * 1000 + 60_000, "r2": time.time() * 1000 + 60_000})

    async def scenario() -> tuple[bool, bool]:
        context = SamplerContext.open(config)
        admission = Admission(context)
        waiter = asyncio.ensure_future(admission.wait(config.model_name, threading.Event()))
        await asyncio.sleep(1.5)
        blocked = not waiter.done()
        dbs.redis.zrem(slots, "r2")  # one request ended: room for one more
        await asyncio.wait_for(waiter, 5)
        await context.aclose()
        return blocked, waiter.result()

    assert asyncio.run(scenario()) == (True, True)


def test_killed_workers_requests_stop_counting_after_the_lease(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    """A request slot whose holder stopped renewing it lapses: admission opens again."""
    config.target_concurrency = 1
    service = InferenceService(name="s1", endpoint="http://127.0.0.1:1",
                               models=[config.model_name], status=ServiceStatus.UP)
    dbs.store.insert(service)
    slots = RedisKeys(config.key_prefix).service_slots(service.id)
    dbs.redis.zadd(slots, {"dead-worker-request": time.time() * 1000 + 1500})

    async def scenario() -> float:
        context = SamplerContext.open(config)
        started = time.monotonic()
        await asyncio.wait_for(
            Admission(context).wait(config.model_name, threading.Event()), 10)
        await context.aclose()
        return time.monotonic() - started

    assert 0.5 < asyncio.run(scenario()) < 5.0
