"""The SGLang 0.5.23 contract, checked with sglang's own pydantic models and argument parser:
the bodies the Router sends, the replies of the CPU engine and of the test stubs, and the
``sglang.launch_server`` command the InferenceManager runs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, InferenceService, ServiceStatus
from agentrl.inference.protocol import SGLANG_EXTENSIONS, body_for_kind
from agentrl.inference.routing import Router
from agentrl.inference.sglang import build_sglang_command
from tests.inference.routing_helpers import with_router
from tests.inference.sglang_contract import (
    assert_sglang_response,
    parse_launch_command,
    validate_request,
)
from tests.inference.stub_server import StubServer
from tests.osworld.fake_model import FakeModelServer

MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
OVERRIDES: list[dict[str, Any]] = [
    {},
    {"max_tokens": 8, "seed": 3, "stop": ["\n"], "temperature": 0.0},
    {"max_completion_tokens": 8, "n": 2, "ignore_eos": True, "stop_token_ids": [2]},
]


@pytest.mark.parametrize("params", OVERRIDES)
def test_router_bodies_are_sglang_chat_completion_requests(
    config: AgentTrainingConfig, params: dict[str, Any]
) -> None:
    router = Router(config, None, None, None)  # type: ignore[arg-type]  # the body only
    for tools in (None, TOOLS):
        body = router.build_body(config.model_name, MESSAGES, tools, dict(params))
        request = validate_request(body)
        assert request.return_token_ids is True and request.logprobs is True
        assert request.temperature == params.get("temperature", config.temperature)
        external = body_for_kind(body, "external")
        assert not set(SGLANG_EXTENSIONS) & set(external)
        validate_request(external)


def test_bodies_the_stub_received_and_its_replies_match_sglang(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    with StubServer() as stub:
        dbs.store.insert(InferenceService(name="s", endpoint=stub.url("s"), kind="sglang",
                                          models=[config.model_name], status=ServiceStatus.UP))

        asyncio.run(with_router(config, dbs, lambda router: router.create_chat_completion(
            MESSAGES, tools=TOOLS, seed=1)))
        for plain in ({"messages": MESSAGES}, {"messages": MESSAGES, "logprobs": True}):
            resp = httpx.post(f"{stub.url('s')}/v1/chat/completions", json=plain, timeout=10)
            assert "prompt_token_ids" not in resp.json()["choices"][0]
            assert_sglang_response(resp.json())
    ((_, body),) = [b for b in stub.bodies if b[1].get("tools")]
    validate_request(body)
    for _, reply in stub.replies:
        assert_sglang_response(reply)
    assert "response_token_ids" in stub.replies[0][1]["choices"][0]


def test_fake_model_replies_match_sglang() -> None:
    server = FakeModelServer().start()
    try:
        for extra in ({}, {"logprobs": True, "return_token_ids": True}):
            body = {"model": "m", "messages": MESSAGES, **extra}
            resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
            assert_sglang_response(resp.json())
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {},
    {"logprobs": True},
    {"logprobs": True, "return_token_ids": True, "n": 2, "seed": 1},
    {"return_prompt_token_ids": True, "tools": TOOLS},
])
def test_cpu_engine_replies_are_exactly_sglang_responses(
    engine_url: str, extra: dict[str, Any]
) -> None:
    body = {"model": "SmolLM2-135M-Instruct", "messages": MESSAGES, "max_tokens": 4, **extra}
    validate_request(body)
    data = httpx.post(f"{engine_url}/v1/chat/completions", json=body, timeout=120).json()
    assert_sglang_response(data)
    choice = data["choices"][0]
    assert ("response_token_ids" in choice) == bool(extra.get("return_token_ids"))
    assert ("prompt_token_ids" in choice) == bool(
        extra.get("return_token_ids") or extra.get("return_prompt_token_ids"))
    assert (choice["logprobs"] is None) == (not extra.get("logprobs"))
    models = httpx.get(f"{engine_url}/v1/models", timeout=10).json()
    assert_sglang_response(models, "ModelList")
    assert models["data"][0]["id"] == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("backup", [True, False])
def test_launch_command_parses_with_sglang_server_args(
    config: AgentTrainingConfig, backup: bool
) -> None:
    config.inf_tp_size, config.inf_mem_ratio, config.seed = 2, 0.7, 5
    config.inf_weights_cpu_backup = backup
    argv = build_sglang_command(config, "/models/smol", 30010)
    args = parse_launch_command(argv)
    assert args.model_path == "/models/smol" and args.port == 30010
    assert args.tp_size == 2 and args.mem_fraction_static == 0.7 and args.random_seed == 5
    assert args.served_model_name == config.model_name and args.weight_version == "0"
    assert args.enable_memory_saver is True
    assert args.enable_weights_cpu_backup is backup
    with pytest.raises(SystemExit):  # the parser is strict: an unknown flag is refused
        parse_launch_command([*argv, "--no-such-flag"])
