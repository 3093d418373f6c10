"""Services registered from the CLI and the config (external APIs, SGLang nodes); keys never
shown or logged."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    InferenceService,
    ServiceStatus,
)
from agentrl.errors import ConfigError
from agentrl.inference.services import (
    list_services,
    register_configured_services,
    register_service,
)
from tests.inference.routing_helpers import with_router
from tests.inference.stub_server import StubServer

KEY = "sk-very-secret-key-42"


def test_cli_add_and_list_never_show_the_key(
    config: AgentTrainingConfig, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # pymongo DEBUG command logs echo every document
    runner = CliRunner()
    added = runner.invoke(app, ["services", "add", "https://api.example.com/", "--model",
                                "gpt-eval", "--api-key", KEY])
    assert added.exit_code == 0, added.output
    assert KEY not in added.output
    shown = json.loads(added.output.strip().splitlines()[-1])
    assert shown["name"] == "external:gpt-eval@https://api.example.com"
    assert "api_key" not in shown

    (service,) = dbs.store.find(InferenceService)
    assert service.kind == "external" and service.status == ServiceStatus.UP
    assert service.endpoint == "https://api.example.com" and service.models == ["gpt-eval"]
    assert service.api_key is not None and service.api_key.get_secret_value() == KEY
    assert KEY not in repr(service) and KEY not in str(service)

    listed = runner.invoke(app, ["services", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert KEY not in listed.output
    assert json.loads(listed.output.strip())["models"] == ["gpt-eval"]
    table = runner.invoke(app, ["services", "list"])
    assert table.exit_code == 0 and "gpt-eval" in table.output and KEY not in table.output
    assert KEY not in caplog.text

    # adding again updates in place, keeping one document
    register_service(dbs.store, "https://api.example.com", "gpt-eval", "sk-new")
    assert len(list_services(dbs.store)) == 1


def test_services_from_config(config: AgentTrainingConfig, dbs: Databases) -> None:
    config.external_services = [
        {"url": "http://a:1", "model": "m1", "api_key": KEY},
        {"url": "http://b:2", "model": "m2"},
    ]
    services = register_configured_services(config, dbs.store)
    assert [s.models for s in services] == [["m1"], ["m2"]]
    assert services[1].api_key is None
    assert all("api_key" not in view for view in list_services(dbs.store))
    config.external_services = [{"url": "http://c:3", "api_key": KEY}]
    with pytest.raises(ConfigError, match="model") as info:
        register_configured_services(config, dbs.store)
    assert KEY not in str(info.value)


def test_cli_add_sglang_node_is_routed_without_heartbeat_and_asked_for_ids(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    """An SGLang server on another node, registered with --kind sglang: routed to long after
    any heartbeat would have expired, and its calls ask for and store token ids."""
    config.service_heartbeat_ttl_s = 0.5
    with StubServer() as stub:
        added = CliRunner().invoke(app, ["services", "add", stub.url("node"), "--model",
                                         config.model_name, "--kind", "sglang"])
        assert added.exit_code == 0, added.output
        (service,) = dbs.store.find(InferenceService)
        assert service.kind == "sglang" and service.managed is False
        dbs.store.collection(InferenceService).update_one(
            {"_id": service.id}, {"$set": {"heartbeat_ts": time.time() - 3600}})

        asyncio.run(with_router(config, dbs, lambda router: router.create_chat_completion(
            [{"role": "user", "content": "hi"}])))
    ((sid, body),) = stub.bodies
    assert sid == "node" and body["return_token_ids"] is True
    (call,) = dbs.store.find(DispatchedSamplingTask)
    assert call.completion_token_ids == [11, 12, 13] and call.prompt_token_ids == [1, 2, 3, 4]
    bad = CliRunner().invoke(app, ["services", "add", "http://x", "--model", "m", "--kind", "gpu"])
    assert bad.exit_code != 0
