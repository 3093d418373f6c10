"""Outages the ledger waits out, with a server of the test's own for what is restarted: Redis
restarted empty mid-epoch, the MongoDB-wire server stopped for 20 s, the inference service
failing (HTTP 500), then hanging, then recovering. Nothing is lost, duplicated or scored on an
error; the global step survives."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import Databases, RecordStatus, init_databases
from agentrl.databases.embedded import ensure_embedded_mongo, stop_embedded_mongo
from agentrl.rollout.ledger import GlobalStep, RedisKeys
from agentrl.status import sampling_paused
from tests.conftest import free_port
from tests.inference.stub_server import StubServer
from tests.jobs.drills import (
    assert_consistent,
    count,
    drill_env,
    epoch_finished,
    records,
    register_stub,
)
from tests.jobs.helpers import start_celery, stop, wait_for

pytestmark = pytest.mark.slow


class OwnRedis:
    """A redis-server of the test's own (no persistence), restartable on its port."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 20, "the test's redis-server")
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()




def test_redis_restarted_empty_mid_epoch(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, own_redis: OwnRedis,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queues, leases and the step cache vanish: running attempts retake their leases,
    housekeeping rebuilds the other claims of the epoch from MongoDB, the global step is the
    one MongoDB kept, and nothing runs twice to the end."""
    monkeypatch.setenv("AGENTRL_REDIS_URL", own_redis.url)
    cfg = load_config(**{**config.model_dump(), "redis_url": own_redis.url})
    with init_databases(cfg) as own:
        GlobalStep(own).set(7)
        env = drill_env(cfg, [{"mode": "ok"}] * 6, AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS="4")
        worker = start_celery("worker", tmp_path / "worker.log", **env)
        beat = start_celery("beat", tmp_path / "beat.log", **env)
        try:
            wait_for(lambda: count(dbs, status="running") >= 4 and count(
                dbs, status="created") >= 4, 120, "trajectories running and queued")
            own_redis.kill()
            own_redis.start()  # empty: no queue, no lease, no step cache
            wait_for(lambda: epoch_finished(dbs, 6), 240, "the epoch to finish")
            step_after = GlobalStep(own).get()
        finally:
            stop(beat)
            stop(worker)
    assert step_after == 7
    assert_consistent(dbs, n_tasks=6, generations=2)
    assert "Redis lost the run's ledger state" in (tmp_path / "beat.log").read_text()


def test_mongodb_stopped_for_20_s_mid_epoch(
    config: AgentTrainingConfig, stub: StubServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded server is stopped and started again by the project (as `agentrl status`
    does) on the port it keeps: workers wait their writes out and the epoch finishes."""
    data_dir = tmp_path / "mongo"
    uri = ensure_embedded_mongo(data_dir)
    monkeypatch.setenv("AGENTRL_DB_CONNECTION_STRING", uri)
    cfg = load_config(**{**config.model_dump(), "db_connection_string": uri})
    dbs = init_databases(cfg)
    try:
        register_stub(dbs, stub, cfg)
        env = drill_env(cfg, [{"mode": "ok", "calls": 3}] * 4)
        worker = start_celery("worker", tmp_path / "worker.log", **env)
        beat = start_celery("beat", tmp_path / "beat.log", **env)
        try:
            wait_for(lambda: count(dbs, status="running") >= 4, 120, "trajectories running")
            assert stop_embedded_mongo(data_dir)
            time.sleep(20)  # the outage itself
            assert ensure_embedded_mongo(data_dir) == uri
            wait_for(lambda: epoch_finished(dbs, 4), 300, "the epoch to finish")
        finally:
            stop(beat)
            stop(worker)
        assert_consistent(dbs, n_tasks=4, generations=2, calls=3)
    finally:
        dbs.store.client.drop_database(cfg.db_name)
        dbs.close()
        stop_embedded_mongo(data_dir)


def test_inference_outage_is_waited_out_not_scored(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer, tmp_path: Path
) -> None:
    """HTTP 500 for 20 s, then no answer for 10 s, then answers again: sampling pauses (and says
    why), no trajectory is scored on an error or restarted, every one ends with real samples."""
    env = drill_env(config, [{"mode": "ok", "calls": 3}] * 4, AGENTRL_REQUEST_TIMEOUT_S="3")
    worker = start_celery("worker", tmp_path / "worker.log", **env)
    beat = start_celery("beat", tmp_path / "beat.log", **env)
    paused: dict = {}
    try:
        wait_for(lambda: count(dbs, status="running") >= 8, 120, "8 trajectories running")
        stub.outage = "error"
        wait_for(lambda: bool(paused.update(sampling_paused(dbs)) or paused), 30,
                 "status to say sampling is paused")
        time.sleep(20)  # the outage itself
        stub.outage = "hang"
        time.sleep(10)
        stub.outage = None
        wait_for(lambda: epoch_finished(dbs, 4), 240, "the epoch to finish")
    finally:
        stub.outage = None
        stop(beat)
        stop(worker)
    reason = json.dumps(paused)
    assert "circuit open" in reason and "500" in reason
    assert_consistent(dbs, n_tasks=4, generations=2, calls=3)
    done = records(dbs)
    assert {r.attempt for r in done} == {1}  # waited out inside the attempt: none consumed
    assert {r.status for r in done} == {RecordStatus.READY}
    assert dbs.redis.hgetall(RedisKeys(config.key_prefix).sampling_paused) == {}
