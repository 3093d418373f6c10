"""Fixtures of the MCP tests: the test tool server (stdio and streamable HTTP), the scripted
stub model registered as an external inference service, and running one trajectory."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record
from agentrl.inference.services import register_service
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.mcp import MCPSampler, MCPTask, close_session_pools
from tests.conftest import free_port
from tests.mcp.stub_model import StubModel

TOOL_SERVER = Path(__file__).with_name("tool_server.py")


@pytest.fixture
def stdio_mcp_json(tmp_path: Path) -> Path:
    """An mcp.json naming the test tool server over stdio, as server ``test``."""
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(
        {"mcpServers": {"test": {"command": "python", "args": [str(TOOL_SERVER)]}}}
    ))
    return path


class HttpToolServer:
    """The test tool server as a streamable HTTP process (``start``/``kill`` as often as
    needed, on one port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [sys.executable, str(TOOL_SERVER), "--http", "--port", str(self.port)]
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the HTTP tool server did not start on port {self.port}")

    def kill(self) -> None:
        """Kill it (SIGKILL) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpToolServer]:
    """The test tool server over streamable HTTP, running."""
    server = HttpToolServer()
    server.start()
    yield server
    server.kill()


def http_mcp_json(tmp_path: Path, server: HttpToolServer) -> Path:
    """An mcp.json naming ``server`` (with a header) as server ``test``."""
    path = tmp_path / "mcp_http.json"
    path.write_text(json.dumps({"mcpServers": {"test": {
        "url": server.url, "headers": {"X-Trace": "agentrl-test"}}}}))
    return path


@pytest.fixture
def stub_model(config: AgentTrainingConfig, dbs: Databases) -> Iterator[StubModel]:
    """The scripted model, registered as an external service serving ``config.model_name``."""
    with StubModel() as stub:
        register_service(dbs.store, stub.url, config.model_name)
        yield stub


Body = Callable[[MCPSampler], Awaitable[None]]


def run_trajectory(
    config: AgentTrainingConfig, dbs: Databases, task: MCPTask, after_run: Body | None = None
) -> tuple[MCPSampler, Record]:
    """Push ``task`` as a one-trajectory epoch and sample it with :class:`MCPSampler`.

    Args:
        config: the test's configuration (``num_generations`` is set to 1).
        dbs: its connections.
        task: the task.
        after_run: awaited inside the sampler's context after ``run`` (before scoring).

    Returns:
        The sampler (``failed`` holds an exception of ``run``) and the stored Record.
    """
    config.num_generations = 1
    assert push_epoch(dbs, "train", [task], "mcp", lambda claims: None) is not None

    async def sample() -> MCPSampler:
        try:
            async with MCPSampler(config, split="train") as sampler:
                await sampler.run()
                if after_run is not None:
                    await after_run(sampler)
            return sampler
        finally:
            await close_session_pools()

    sampler = asyncio.run(sample())
    assert sampler.record is not None
    return sampler, dbs.store.get(Record, sampler.record.id)
