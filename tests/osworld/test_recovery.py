"""Kill the sampling worker mid-episode: the env's lease expires, the env is leased again and the
trajectory is redone once, by a second `celery -A agentrl worker`."""

from __future__ import annotations

import signal
from pathlib import Path

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, Task, TaskStatus
from agentrl.inference.services import register_service
from agentrl.rollout.osworld import setup_osworld_envs
from agentrl.rollout.osworld.envs import Environment
from tests.jobs.helpers import start_celery, stop, wait_for
from tests.osworld.fake_model import FakeModelServer
from tests.osworld.standin import StandInServer
from tests.osworld.test_sampler import write_tasks


def test_worker_killed_mid_episode(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    fake_model: FakeModelServer, tmp_path: Path,
) -> None:
    env_server = standin_envs[0]
    (example,) = write_tasks(tmp_path / "tasks.jsonl", 1)
    register_service(dbs.store, fake_model.url, config.model_name)
    config.osworld.env_urls = env_server.url  # one env: the second attempt must wait for it
    settings = {
        "AGENTRL_SAMPLER": "osworld", "AGENTRL_SAMPLER_MODULES": "agentrl.rollout.osworld",
        "AGENTRL_TRAIN_FILE": str(tmp_path / "tasks.jsonl"), "AGENTRL_NUM_GENERATIONS": "1",
        "AGENTRL_OSWORLD__MAX_STEPS": "3", "AGENTRL_OSWORLD__ENV_LEASE_TTL_S": "3",
        "AGENTRL_LEASE_TTL_S": "4", "AGENTRL_HEARTBEAT_INTERVAL_S": "1",
        "AGENTRL_HOUSEKEEPING_INTERVAL_S": "1", "AGENTRL_BEAT_INTERVAL_S": "1",
    }
    env_server.state.execute_delay_s = 600.0  # the first worker hangs in its first action
    procs = []
    with setup_osworld_envs(config, dbs):
        try:
            first = start_celery("worker", tmp_path / "worker1.log", **settings)
            procs += [first, start_celery("beat", tmp_path / "beat.log", **settings)]
            wait_for(lambda: env_server.state.execute_calls == 1, 120, "the first action")
            held = dbs.store.collection(Environment).find_one({})
            assert held["in_use"] and held["lease_count"] == 1
            stop(first, signal.SIGKILL)
            env_server.state.execute_delay_s = 0.0
            procs.append(start_celery("worker", tmp_path / "worker2.log", **settings))
            wait_for(lambda: dbs.store.collection(Task).count_documents(
                {"status": TaskStatus.COMPLETED.value}) == 1, 120, "the task to complete")
        finally:
            for proc in procs:
                stop(proc)
        env = dbs.store.collection(Environment).find_one({})
        # the dead worker's lease expired and the env was leased again, then released
        assert env["lease_count"] == 2 and not env["in_use"]
    (record,) = dbs.store.find(Record, {})
    assert record.attempts == 2 and record.score == 1.0
    assert record.meta["lease_owner"] != held["lease_owner"]
    assert env_server.state.resets == [example["id"], example["id"]]  # redone once
    assert [e[0] for e in env_server.state.evaluations] == [example["id"]]
