"""setup_osworld_envs: registering control servers by URL, LOCAL_RANK 0 only, unregistering,
the desktop-env provider path (lazy import) and its bridge."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.errors import ProviderUnavailableError
from agentrl.rollout.osworld import OSWorldEnv, OSWorldEnvClient, setup_osworld_envs
from agentrl.rollout.osworld.envs import Environment
from agentrl.rollout.osworld.provision import env_name_for
from tests.conftest import free_port
from tests.osworld.standin import StandInServer


def _names(dbs: Databases) -> list[str]:
    return sorted(raw["name"] for raw in dbs.store.collection(Environment).find({}))


def test_registers_reachable_urls_and_reports_the_others(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    config.osworld.env_urls = ",".join([s.url for s in standin_envs] + [dead])
    with setup_osworld_envs(config, dbs) as result:
        assert result.provisioned
        assert sorted(e.name for e in result.envs) == sorted(
            env_name_for(s.url) for s in standin_envs)
        assert list(result.unreachable) == [dead]
        stored = list(dbs.store.find(Environment, {}))
        assert all(isinstance(e, OSWorldEnv) for e in stored)
        assert {(e.url, e.screen_width, e.screen_height, e.in_use) for e in stored} == {
            (s.url, 640, 360, False) for s in standin_envs}
        # provisioning again re-registers instead of duplicating
        again = setup_osworld_envs(config, dbs)
        assert [e.id for e in again.envs] == [e.id for e in result.envs]
        again.close(unregister=False)
        assert len(_names(dbs)) == 2
    assert _names(dbs) == []  # unregistered on close


def test_local_rank_other_than_zero_provisions_nothing(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    config.osworld.env_urls = standin_envs[0].url
    result = setup_osworld_envs(config, dbs)
    assert not result.provisioned and result.envs == []
    assert _names(dbs) == []


PROVISION_SCRIPT = """
import json, sys
from agentrl.configs import load_config
from agentrl.rollout.osworld import setup_osworld_envs
result = setup_osworld_envs(load_config())
print(json.dumps({"provisioned": result.provisioned, "envs": [e.name for e in result.envs]}),
      flush=True)
sys.stdin.readline()
result.close()
"""


def test_two_local_ranks_register_the_envs_once(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
) -> None:
    urls = ",".join(s.url for s in standin_envs)
    procs = []
    for rank in ("0", "1"):
        env = {**os.environ, "LOCAL_RANK": rank, "AGENTRL_OSWORLD__ENV_URLS": urls}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", PROVISION_SCRIPT], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        ))
    try:
        reports = [json.loads(p.stdout.readline()) for p in procs]
        assert reports[0] == {"provisioned": True,
                              "envs": [env_name_for(s.url) for s in standin_envs]}
        assert reports[1] == {"provisioned": False, "envs": []}
        assert _names(dbs) == sorted(env_name_for(s.url) for s in standin_envs)
    finally:
        for proc in procs:
            proc.communicate("\n", timeout=60)
    assert [p.returncode for p in procs] == [0, 0]
    assert _names(dbs) == []  # rank 0 unregistered them at shutdown


def test_provider_without_desktop_env_says_how_to_install(
    config: AgentTrainingConfig, dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config.osworld.provider = "docker"
    with pytest.raises(ProviderUnavailableError, match="pip install desktop-env"):
        setup_osworld_envs(config, dbs)


class FakeDesktopEnv:
    """What the bridge calls on desktop-env's DesktopEnv, recorded."""

    def __init__(self, vm_ip: str, server_port: int) -> None:
        self.vm_ip, self.server_port = vm_ip, server_port
        self.action_history: list[Any] = []
        self.reset_with: list[dict[str, Any]] = []
        self.closed = False

    def reset(self, task_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.reset_with.append(task_config or {})
        self.action_history = []

    def evaluate(self) -> float:
        return 1.0 if self.action_history[-1:] == ["FAIL"] else 0.25

    def close(self) -> None:
        self.closed = True


def test_desktop_envs_are_served_through_the_bridge(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    server = standin_envs[0]
    fake = FakeDesktopEnv("127.0.0.1", server.port)
    with setup_osworld_envs(config, dbs, desktop_envs=[fake]) as result:
        (env,) = result.envs
        assert env.url == server.url and env.bridge_url.endswith(f"/envs/{env.name}")

        async def episode() -> tuple[bool, float, str]:
            async with OSWorldEnvClient(env.url, 10, env.bridge_url) as client:
                setup_done = await client.reset({"id": "t1", "config": []})
                score = await client.evaluate({"id": "t1"}, "FAIL")
                return setup_done, score, await client.platform()

        assert asyncio.run(episode()) == (True, 1.0, "Linux")
        assert fake.reset_with == [{"id": "t1", "config": []}]
        assert fake.action_history == ["FAIL"]
    assert fake.closed and _names(dbs) == []


def test_cli_provision_and_envs(
    config: AgentTrainingConfig, dbs: Databases, standin_envs: list[StandInServer],
) -> None:
    url = standin_envs[1].url
    env = {**os.environ, "AGENTRL_OSWORLD__ENV_URLS": url}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentrl.cli import main; main()", "osworld", "provision"],
        env=env, text=True, stdout=subprocess.PIPE,
    )
    try:
        report = json.loads(proc.stdout.readline())
        assert report == {"provisioned": True, "envs": [env_name_for(url)], "unreachable": {}}
        listed = CliRunner().invoke(app, ["osworld", "envs", "--json"])
        assert listed.exit_code == 0, listed.output
        (row,) = [json.loads(line) for line in listed.output.splitlines()]
        assert (row["name"], row["url"], bool(row["in_use"])) == (env_name_for(url), url, False)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert _names(dbs) == []
