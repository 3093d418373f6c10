"""Fixtures of the job-system tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from tests.inference.stub_server import StubServer
from tests.jobs.drills import register_stub


@pytest.fixture
def stub(config: AgentTrainingConfig, dbs: Databases) -> Iterator[StubServer]:
    """The inference service of a drill, registered as an SGLang node: answers after 1 s, so a
    trajectory of a few calls lasts long enough for a fault to land mid-flight."""
    with StubServer() as server:
        server.delay_s = 1.0
        register_stub(dbs, server, config)
        yield server
