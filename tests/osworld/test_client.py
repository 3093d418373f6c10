"""OSWorldEnvClient against the stand-in control server: observations, setup steps of real
OSWorld tasks, actions, evaluation."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.errors import EnvRequestError
from agentrl.rollout.osworld import OSworldDataset, OSWorldEnvClient
from tests.conftest import SHARED_DATA, free_port
from tests.osworld.standin import StandInServer


def test_episode_protocol_on_real_task_configs(standin_envs: list[StandInServer]) -> None:
    server = standin_envs[0]
    tasks = [t for t in OSworldDataset(SHARED_DATA / "osworld", domains=["libreoffice_calc"])
             if not any(s["type"] == "sleep" for s in t.task_config["config"])][:3]
    feasible = next(t for t in tasks if t.task_config["evaluator"]["func"] != "infeasible")

    async def episode() -> tuple[object, ...]:
        async with OSWorldEnvClient(server.url, timeout_s=10) as client:
            setup_done = await client.reset(feasible.task_config)
            await client.run_setup(feasible.task_config["config"])
            png = await client.screenshot()
            tree = await client.accessibility_tree()
            size = await client.screen_size()
            score_before = await client.evaluate(feasible.task_config, "")
            result = await client.run_action("pyautogui.click(10, 20)")
            score_after = await client.evaluate(feasible.task_config, "DONE")
            return setup_done, png, tree, size, score_before, result, score_after

    setup_done, png, tree, size, before, result, after = asyncio.run(episode())
    assert setup_done is False  # the stand-in leaves setup to the client
    assert png.startswith(b"\x89PNG") and "<desktop-frame" in tree and size == (640, 360)
    assert (before, result["returncode"], after) == (0.0, 0, 1.0)
    steps = feasible.task_config["config"]
    expected = []
    for step in steps:
        if step["type"] == "download":
            expected += [("download_file", f) for f in step["parameters"]["files"]]
        else:
            kind = {"open": "open_file", "command": "execute"}.get(step["type"], step["type"])
            expected.append((kind, step["parameters"]))
    assert server.state.setup_steps == expected
    assert server.state.resets == [feasible.example_id]
    assert server.state.executed[-1][:2] == ["python", "-c"]
    assert server.state.executed[-1][2].endswith("pyautogui.click(10, 20)")


def test_unreachable_server_raises_with_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def call() -> bytes:
        async with OSWorldEnvClient(url, timeout_s=2) as client:
            return await client.screenshot()

    with pytest.raises(EnvRequestError, match=f"{url}/screenshot"):
        asyncio.run(call())
