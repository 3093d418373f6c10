"""What SamplingScheduler does about inference before it samples: use a live service, say at
once that registered services are not UP (naming the fixes), ignore dead leftovers."""

from __future__ import annotations

import logging
import time

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, InferenceService, ServiceStatus
from agentrl.inference.availability import sampling_inference, view_services
from agentrl.inference.services import register_service, set_service_status
from tests.conftest import free_port


def _leftover(dbs: Databases, name: str, age_s: float, status: ServiceStatus) -> None:
    """A CPU engine's registration whose process is gone (nothing listens on its port)."""
    dbs.store.insert(InferenceService(
        name=name, endpoint=f"http://127.0.0.1:{free_port()}", models=["SmolLM2-135M-Instruct"],
        kind="cpu", status=status, heartbeat_ts=time.time() - age_s,
    ))


def test_registered_but_none_up_is_said_within_seconds_with_the_fixes(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    service = register_service(dbs.store, "http://10.9.9.9:8000", config.model_name)
    set_service_status(dbs.store, service.name, ServiceStatus.DOWN)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agentrl.inference.availability"):
        with sampling_inference(config, dbs) as engine:
            assert engine is None  # a registered service exists: no engine of our own
    assert time.monotonic() - started < 5
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"no inference service for model {config.model_name!r} is UP" in message
    assert service.name in message and "DOWN" in message
    assert "agentrl services add http://127.0.0.1:" in message
    assert "agentrl engine serve --port" in message and "agentrl services list" in message


def test_live_service_is_used_and_dead_leftovers_are_ignored(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    _leftover(dbs, "cpu-dp0@old:1", age_s=3600, status=ServiceStatus.UP)  # crashed long ago
    _leftover(dbs, "cpu-dp0@old:2", age_s=1, status=ServiceStatus.DOWN)  # stopped just now
    view = view_services(config, dbs)
    assert sorted(s.name for s in view.dead) == ["cpu-dp0@old:1", "cpu-dp0@old:2"]
    assert not view.live and not view.pending
    with caplog.at_level(logging.WARNING, logger="agentrl.inference.availability"):
        with sampling_inference(config, dbs, start_engine=False) as engine:
            assert engine is None
    assert caplog.records == []  # leftovers are not "services that are not UP"
    register_service(dbs.store, "http://10.9.9.9:8000", config.model_name)
    assert [s.kind for s in view_services(config, dbs).live] == ["external"]
    with sampling_inference(config, dbs) as engine:
        assert engine is None
