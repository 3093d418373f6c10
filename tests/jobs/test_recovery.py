"""Leases, redelivery and races: kill -9 a worker mid-trajectory, a trajectory longer than the
visibility timeout, two schedulers started at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from agentrl.celery_app import enqueue_claims, make_app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, Task, TaskStatus
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.leases import inflight_key
from tests.jobs.helpers import REPO, celery_env, start_celery, stop, wait_for
from tests.jobs.rft_example import RFTDataset, make_items


def all_completed(dbs: Databases, n_tasks: int) -> bool:
    coll = dbs.store.collection(Task)
    return coll.count_documents({"status": TaskStatus.COMPLETED.value}) == n_tasks


def runs(config: AgentTrainingConfig) -> dict[str, int]:
    client = redis.Redis.from_url(config.redis_url, decode_responses=True)
    try:
        return {k: int(v) for k, v in client.hgetall(f"{config.key_prefix}:test:runs").items()}
    finally:
        client.close()


def test_kill9_worker_recovers_within_lease(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    lease_ttl_s, sleep_s = 4.0, 5.0
    env = {
        "AGENTRL_SAMPLER": "rft", "AGENTRL_MAX_TRAIN_TASKS": "5", "AGENTRL_NUM_GENERATIONS": "4",
        "AGENTRL_LEASE_TTL_S": str(lease_ttl_s), "AGENTRL_HEARTBEAT_INTERVAL_S": "1",
        "AGENTRL_HOUSEKEEPING_INTERVAL_S": "1", "AGENTRL_BEAT_INTERVAL_S": "1",
        "RFT_SLEEP_S": str(sleep_s),
    }
    first = start_celery("worker", tmp_path / "worker1.log", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    second = None
    try:
        wait_for(lambda: dbs.redis.hlen(inflight_key(config.key_prefix)) == 20, 90,
                 "20 trajectories in flight")
        stop(first, signal.SIGKILL)
        killed_at = time.monotonic()
        assert sum(runs(config).values()) == 20
        second = start_celery("worker", tmp_path / "worker2.log", **env)
        wait_for(lambda: all_completed(dbs, 5), 90, "every task to complete")
        recovered_s = time.monotonic() - killed_at
    finally:
        for proc in (first, beat, second):
            if proc is not None:
                stop(proc)
    # recovery waited for the lease (seconds), not for the visibility timeout (7200 s default)
    assert config.visibility_timeout_s == 7200
    assert recovered_s < lease_ttl_s + sleep_s + 30
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 20
    assert len({r.id for r in records}) == 20
    assert {r.attempts for r in records} == {2}
    assert runs(config) == {r.id: 2 for r in records}
    for task in dbs.store.find(Task, {}):
        assert sorted(task.scores) == ["0", "1", "2", "3"]
    assert dbs.store.collection(Task).count_documents({"epoch": 1}) == 5


def test_trajectory_longer_than_visibility_timeout_runs_once(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    config.num_generations, config.visibility_timeout_s = 2, 2
    env = {"AGENTRL_VISIBILITY_TIMEOUT_S": "2", "AGENTRL_HEARTBEAT_INTERVAL_S": "1"}
    worker = start_celery("worker", tmp_path / "worker.log", **env)
    app = make_app(config)
    try:
        dataset = RFTDataset(make_items(1, sleep_s=12.0))
        assert push_epoch(dbs, "train", dataset, "rft", lambda c: enqueue_claims(app, c)) == 1
        wait_for(lambda: all_completed(dbs, 1), 90, "the task to complete")
        time.sleep(1.0)
    finally:
        stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert "'leased'" in log, "the broker never redelivered the long trajectory"
    records = list(dbs.store.find(Record, {}))
    assert len(records) == 2 and {r.attempts for r in records} == {1}
    assert runs(config) == {r.id: 1 for r in records}


def test_two_schedulers_push_each_epoch_once(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    env = celery_env(AGENTRL_NUM_TRAIN_EPOCHS="2", AGENTRL_NUM_GENERATIONS="2")
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.jobs.run_scheduler", "3"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=(tmp_path / f"s{i}.log").open("w"),
                         text=True, start_new_session=True)
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], [
        (tmp_path / f"s{i}.log").read_text()[-2000:] for i in range(2)]
    pushed = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert sorted(pushed[0] + pushed[1]) == [1, 2]
    coll = dbs.store.collection(Task)
    assert [coll.count_documents({"epoch": e}) for e in (1, 2)] == [3, 3]
    assert dbs.store.collection(Record).count_documents({}) == 12
    assert all_completed(dbs, 6)
