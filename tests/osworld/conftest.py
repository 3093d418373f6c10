"""Fixtures of the OSWorld tests: stand-in env control servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.osworld.fake_model import FakeModelServer
from tests.osworld.standin import StandInServer


@pytest.fixture
def standin_envs() -> Iterator[list[StandInServer]]:
    """Two stand-in OSWorld env control servers (stopped after the test)."""
    servers = [StandInServer("env-a").start(), StandInServer("env-b").start()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def fake_model() -> Iterator[FakeModelServer]:
    """The scripted model: click on the first step, DONE on the next."""
    server = FakeModelServer().start()
    yield server
    server.stop()


# The CPU engine with SmolLM2 (a subprocess shared by the session), from the inference tests.
from tests.inference.conftest import engine_url, model_dir  # noqa: E402, F401
