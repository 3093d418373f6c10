"""Fault drills of the trajectory ledger with real Celery workers and beat in subprocesses, real
Redis and the MongoDB-wire server: kill -9, a worker frozen past its lease, SIGTERM, a redelivered
message. Trajectories last a few seconds (the stub inference service answers after a delay), so
each fault lands mid-flight; every drill waits on the condition it checks."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from agentrl import evaluate
from agentrl.celery_app import enqueue_claims, make_app, requested_pool
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, ErrorKind, RecordStatus
from agentrl.rollout.claims import Claim
from agentrl.rollout.runtime import PoolNotSupportedError, check_pool
from agentrl.status import queue_depths
from agentrl.training.records import RecordClaimer
from tests.inference.stub_server import StubServer
from tests.jobs.drills import (
    FAULT_MODULE,
    assert_consistent,
    count,
    drill_env,
    epoch_finished,
    records,
)
from tests.jobs.helpers import start_celery, stop, wait_for

pytestmark = pytest.mark.slow




def test_kill9_worker_mid_epoch_loses_and_duplicates_nothing(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    # four run at once, so at the kill the worker's hand-off threads hold further messages that
    # wait for admission: those come back from the broker after the visibility timeout, the
    # leased ones from housekeeping
    env = drill_env(config, [{"mode": "ok"}] * 5, AGENTRL_VISIBILITY_TIMEOUT_S="15",
                    AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS="4")
    first = start_celery("worker", tmp_path / "worker1.log", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    second = None
    try:
        # every record is visible from the push on, and RUNNING while its attempt runs
        wait_for(lambda: count(dbs, status="running") == 4, 120, "4 trajectories running")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        running_at_kill = {r.id for r in records(dbs) if r.status == RecordStatus.RUNNING}
        second = start_celery("worker", tmp_path / "worker2.log", **env)
        wait_for(lambda: epoch_finished(dbs, 5), 300, "the epoch to finish")
    finally:
        for proc in (first, beat, second):
            if proc is not None:
                stop(proc)
    assert_consistent(dbs, n_tasks=5, generations=2)
    by_id = {r.id: r for r in records(dbs)}
    # each one running at the kill was restarted once (its first attempt recorded as lost), by
    # housekeeping re-sending its lapsed lease: the broker had its message acknowledged
    for record_id in running_at_kill:
        record = by_id[record_id]
        assert record.attempt == 2 and record.failed_attempt == 1, record
    assert "claims whose leases lapsed" in (tmp_path / "beat.log").read_text()


def test_worker_frozen_past_its_lease_writes_nothing(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """SIGSTOP a worker past lease_ttl_s: housekeeping re-sends, a second worker samples the
    trajectories again; after SIGCONT the frozen copy finds its lease taken and stops: the Record
    and the calls that train are the newer attempt's."""
    stub.delay_s = 2.0
    env = drill_env(config, [{"mode": "ok", "calls": 3}], AGENTRL_LEASE_TTL_S="3")
    frozen = start_celery("worker", tmp_path / "frozen.log", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    other = None
    try:
        wait_for(lambda: count(dbs, status="running") == 2 and len(stub.bodies) >= 2, 120,
                 "both trajectories calling the model")
        os.killpg(frozen.pid, signal.SIGSTOP)
        other = start_celery("worker", tmp_path / "other.log", **env)
        wait_for(lambda: epoch_finished(dbs, 1), 120, "the second attempts to finish")
        finished = {r.id: (r.attempt, r.worker, r.updated_at) for r in records(dbs)}
        os.killpg(frozen.pid, signal.SIGCONT)
        log = tmp_path / "frozen.log"
        wait_for(lambda: log.read_text().count("a newer attempt holds it") >= 2, 60,
                 "the frozen copies to stop")
    finally:
        if frozen.poll() is None:
            os.killpg(frozen.pid, signal.SIGCONT)
        for proc in (frozen, beat, other):
            if proc is not None:
                stop(proc)
    assert_consistent(dbs, n_tasks=1, generations=2, calls=3)
    for record in records(dbs):
        assert record.attempt == 2
        assert (record.attempt, record.worker, record.updated_at) == finished[record.id]
    claimer = RecordClaimer(config, dbs)
    ready = [r for r in records(dbs) if r.status == RecordStatus.READY]
    for record_id, calls in claimer.calls_of(ready).items():
        assert {c.attempt for c in calls} == {2} and len(calls) == 3, record_id


def test_sigterm_hands_unfinished_trajectories_back_at_once(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """A stopping worker lets trajectories finish for shutdown_grace_s, then hands the rest
    back: they are sampled again at once, not after the (long) lease."""
    stub.delay_s = 3.0
    env = drill_env(config, [{"mode": "ok", "calls": 3}] * 2, AGENTRL_LEASE_TTL_S="120",
                    AGENTRL_SHUTDOWN_GRACE_S="1")
    leaving = start_celery("worker", tmp_path / "leaving.log", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    staying = None
    try:
        wait_for(lambda: count(dbs, status="running") == 4, 120, "4 trajectories running")
        os.killpg(leaving.pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        leaving.wait(timeout=60)
        exit_s = time.monotonic() - stopped_at
        staying = start_celery("worker", tmp_path / "staying.log", **env)
        wait_for(lambda: epoch_finished(dbs, 2), 100, "the epoch to finish")
        recovered_s = time.monotonic() - stopped_at
    finally:
        for proc in (leaving, beat, staying):
            if proc is not None:
                stop(proc)
    assert exit_s < 1 + 20, exit_s
    assert recovered_s < 120, recovered_s  # not after the lease
    assert_consistent(dbs, n_tasks=2, generations=2, calls=3)
    for record in records(dbs):  # handed back once, an uncharged infrastructure failure
        assert record.attempt == 2 and record.infrastructure_failures == 1, record
    assert "handing 4 unfinished trajectories back" in (tmp_path / "leaving.log").read_text()


def test_a_trajectory_that_kills_its_worker_fails_and_its_group_completes(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """traj 0 SIGKILLs its process on every attempt: started max_sample_attempts times (each
    death counts), then FAILED as lost; its group completes from the other two."""
    env = drill_env(
        config, [{"mode": "kill", "poison_traj": 0}], AGENTRL_NUM_GENERATIONS="3",
        AGENTRL_MAX_SAMPLE_ATTEMPTS="2", AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS="1",
        AGENTRL_VISIBILITY_TIMEOUT_S="5",
    )
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    workers = []
    try:
        deadline = time.monotonic() + 240
        while not epoch_finished(dbs, 1):  # a supervisor: start a worker whenever one died
            assert time.monotonic() < deadline, "the epoch did not finish"
            if not workers or workers[-1].poll() is not None:
                workers.append(start_celery("worker", tmp_path / f"w{len(workers)}.log", **env))
            time.sleep(0.5)
    finally:
        for proc in (beat, *workers):
            stop(proc)
    assert_consistent(dbs, n_tasks=1, generations=3)
    by_traj = {r.traj_id: r for r in records(dbs)}
    poison = by_traj[0]
    assert poison.status == RecordStatus.FAILED
    assert poison.error_kind == ErrorKind.INFRASTRUCTURE and "was lost" in poison.error
    assert poison.attempt == 3  # the third start found the cap reached
    assert {by_traj[1].status, by_traj[2].status} == {RecordStatus.READY}
    assert [by_traj[t].score for t in (1, 2)] == [1.0, 0.0]
    assert len(workers) >= 3  # two deaths at least


def test_prefork_pool_runs_an_event_loop_per_child(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    env = drill_env(config, [{"mode": "ok"}] * 4, AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS="2")
    worker = start_celery("worker", tmp_path / "worker.log", "-P", "prefork", "-c", "2", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    try:
        wait_for(lambda: epoch_finished(dbs, 4), 180, "the epoch to finish")
    finally:
        stop(beat)
        stop(worker)
    assert "(prefork)" in (tmp_path / "worker.log").read_text()
    assert_consistent(dbs, n_tasks=4, generations=2)
    assert len({r.worker for r in records(dbs)}) == 2  # both children sampled


def test_pools_that_patch_threads_are_refused_and_prefork_is_honoured() -> None:
    assert requested_pool(["celery", "-A", "agentrl", "worker", "-P", "prefork"]) == "prefork"
    assert requested_pool(["worker", "--pool=solo"]) == "solo"
    assert requested_pool(["worker", "-Peventlet"]) == "eventlet"
    assert requested_pool(["worker", "-Q", "sampling"]) is None
    check_pool("prefork")
    check_pool("threads")
    with pytest.raises(PoolNotSupportedError, match="prefork"):
        check_pool("gevent")


def test_messages_of_another_run_are_dropped_with_one_warning(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """Claims whose Records this database does not hold (another run under the same prefix,
    or left from before --fresh) are acknowledged and dropped: one warning, nothing written."""
    app = make_app(config)
    foreign = [Claim(f"gone-{i}", 0, 1, "train", "fault") for i in range(30)]
    enqueue_claims(app, foreign)
    worker = start_celery("worker", tmp_path / "worker.log", **drill_env(config, []))
    try:
        wait_for(lambda: queue_depths(app) == {"sampling": 0, "evaluation": 0, "unacked": 0}
                 and "such messages so far" in (tmp_path / "worker.log").read_text(), 90,
                 "the worker to drop the foreign messages")
    finally:
        stop(worker)
    text = (tmp_path / "worker.log").read_text()
    assert text.count("a message of another run; dropped") == 1
    assert records(dbs) == []


def test_evaluation_is_not_starved_by_a_training_epoch(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """Every training slot is taken by long trajectories and more wait in the queue; an
    evaluation still runs on the reserved slots and returns within its timeout."""
    stub.delay_s = 3.0
    env = drill_env(config, [{"mode": "ok", "calls": 3}] * 6,
                    AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS="2")
    worker = start_celery("worker", tmp_path / "worker.log", "-Q", "sampling,evaluation", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    items = tmp_path / "eval.jsonl"
    items.write_text("".join('{"mode": "ok", "calls": 1}\n' for _ in range(2)))
    try:
        wait_for(lambda: count(dbs, status="running") == 2 and count(dbs, status="created") >= 4,
                 120, "the training slots full, more queued")
        config.sampler_modules = FAULT_MODULE
        summary = evaluate(sampler="fault", dataset=items, config=config, split="eval",
                           poll_interval_s=0.5).get(timeout=60)
        busy_training = count(dbs, split="train", status="running")
    finally:
        stop(beat)
        stop(worker)
    assert summary["count"] == summary["expected"] == 2 and summary["failures"] == 0
    assert busy_training == 2  # training kept its slots meanwhile
