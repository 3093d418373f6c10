"""MCPSampler against the real test tool server (stdio and streamable HTTP) and a scripted model
answering as the CPU engine does: tool calls in both formats, tool failures, a dying server,
max_turns and max_context_tokens, and the loss mask of a tool trajectory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, ErrorKind, Record, RecordStatus
from agentrl.errors import ToolServerUnavailableError
from agentrl.inference.model_files import default_model_path
from agentrl.inference.services import register_service
from agentrl.rollout.epochs import push_epoch
from agentrl.rollout.mcp import MCPSampler, MCPTask, close_session_pools
from agentrl.rollout.registry import get_sampler
from agentrl.training.datasets import convert_record_to_data_func
from agentrl.training.tokenization import tokenize_sample
from tests.mcp.conftest import HttpToolServer, http_mcp_json, run_trajectory
from tests.mcp.stub_model import StubModel


def call(name: str, **arguments: Any) -> str:
    """A Hermes-style tool call block."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def tool_messages(record: Record) -> list[dict[str, Any]]:
    return [m for m in record.meta["messages"] if m["role"] == "tool"]


def test_mcp_is_registered() -> None:
    assert get_sampler("mcp") is MCPSampler


def test_stdio_trajectory_calls_a_tool_gets_the_result_and_answers(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.mcp.tool_call_format = "text"
    replies = [f"I will add them. {call('add', a=20, b=22)}", call("echo", text="ok"),
               call("pid"), "The sum is <answer>42</answer>."]
    stub_model.script(config.model_name, list(replies))
    sampler, record = run_trajectory(
        config, dbs, MCPTask(question="What is 20 + 22?", answers=["42"]))

    assert sampler.failed is None and record.score == 1.0
    assert record.meta["answer"] == "42" and record.meta["ended"] == "answer"
    assert [m["role"] for m in record.meta["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool",
        "assistant"]
    tools = tool_messages(record)
    assert [(m["name"], m["content"]) for m in tools[:2]] == [("add", "42"), ("echo", "ok")]
    assert tools[2]["content"].isdigit()  # the server's pid
    metrics = record.meta["metrics"]
    assert metrics["turns"] == 4 and metrics["tool_calls"] == 3 and metrics["tool_errors"] == 0
    assert metrics["correct"] is True and metrics["well_formed"] is True
    assert metrics["context_tokens"] == stub_model.responses[-1]["usage"]["total_tokens"]
    # the model saw the tools described in the system prompt, and its own tool call after it
    system = stub_model.requests[0]["messages"][0]["content"]
    assert '"name": "add"' in system and "<tool_call>" in system
    assert "tools" not in stub_model.requests[0]  # text format: no `tools` field
    second = stub_model.requests[1]["messages"]
    assert second[2] == {"role": "assistant", "content": replies[0]}
    assert second[3]["role"] == "tool" and second[3]["content"] == "42"

    # training: the four calls extend each other, so they train as one sequence, and only the
    # assistant tokens (the scripted replies and their end-of-turn token) carry loss
    calls = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
    samples = convert_record_to_data_func(record, calls)
    assert len(samples) == 1 and len(samples[0].turns) == 4
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenized = tokenize_sample(samples[0], tokenizer)
    runs, current = [], []
    for token, mask in zip(tokenized.input_ids, tokenized.loss_mask, strict=True):
        if mask:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tokenizer.decode(r) for r in runs] == [f"{text}<|im_end|>" for text in replies]
    untrained = tokenizer.decode(
        [t for t, m in zip(tokenized.input_ids, tokenized.loss_mask, strict=True) if not m])
    assert "What is 20 + 22?" in untrained and '"name": "add"' in untrained
    assert "<|im_start|>tool\n42<|im_end|>" in untrained  # tool results never train


def test_http_server_openai_tool_calls_run_concurrently(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path, http_server: HttpToolServer,
    stub_model: StubModel,
) -> None:
    config.mcp_config = str(http_mcp_json(tmp_path, http_server))
    config.mcp.tool_call_format = "openai"
    config.mcp.answer_format = "boxed"
    # two calls in one reply: the stub (like the engine) returns them as OpenAI tool_calls
    stub_model.script(config.model_name, [
        call("hang", seconds=1.5) + call("hang", seconds=1.5), "Done: \\boxed{woke up}"])
    started = time.monotonic()
    sampler, record = run_trajectory(
        config, dbs, MCPTask(question="Sleep twice.", answers=["Woke up."]))
    elapsed = time.monotonic() - started

    assert sampler.failed is None and record.score == 1.0  # exact match after normalization
    first = stub_model.requests[0]
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "echo", "fail", "hang", "pid"]
    reply = stub_model.responses[0]["choices"][0]["message"]
    assert reply["content"] == "" and len(reply["tool_calls"]) == 2
    history = stub_model.requests[1]["messages"]
    assert history[2] == {"role": "assistant", "content": "", "tool_calls": reply["tool_calls"]}
    assert [(m["tool_call_id"], m["content"]) for m in history[3:]] == [
        (c["id"], "woke up") for c in reply["tool_calls"]]
    latencies = [c["latency_s"] for c in record.meta["tool_calls"]]
    assert min(latencies) >= 1.5 and elapsed < sum(latencies) + 10  # overlapped
    log = record.meta["tool_calls"]
    assert [(c["name"], c["server"], c["arguments"], c["error"]) for c in log] == [
        ("hang", "test", {"seconds": 1.5}, False)] * 2


def test_hermes_blocks_are_read_when_the_server_returns_no_tool_calls(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    with StubModel(parse_tools=False) as stub:  # like SGLang without a tool-call parser
        register_service(dbs.store, stub.url, config.model_name)
        stub.script(config.model_name, [call("add", a=1, b=2), "<answer>3</answer>"])
        sampler, record = run_trajectory(config, dbs, MCPTask(question="1+2?", answers=["3"]))
    assert "tools" in stub.requests[0]  # openai format: tools offered
    assert "tool_calls" not in stub.responses[0]["choices"][0]["message"]
    assert tool_messages(record)[0]["content"] == "3" and record.score == 1.0


def test_malformed_raising_and_hanging_calls_become_error_messages(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.mcp.tool_call_format = "text"
    config.mcp.tool_timeout_s = 1.0
    stub_model.script(config.model_name, [
        "<tool_call>{add 1 2}</tool_call>" + call("fail", message="disk on fire")
        + call("hang", seconds=60) + call("nosuch") + call("add", a=1),
        "I could not do it. <answer>unknown</answer>"])
    sampler, record = run_trajectory(config, dbs, MCPTask(question="?", answers=["3"]))

    assert sampler.failed is None and record.meta["ended"] == "answer"
    contents = [m["content"] for m in tool_messages(record)]
    assert len(contents) == 5 and all(c.startswith("Error") for c in contents)
    assert "malformed tool call: not valid JSON" in contents[0]
    assert "disk on fire" in contents[1]
    assert "longer than 1 s" in contents[2]
    assert "unknown tool 'nosuch'" in contents[3] and "add, echo, fail, hang, pid" in contents[3]
    assert "Field required" in contents[4]  # b is missing
    assert record.meta["tool_calls"][2]["latency_s"] < 10
    assert record.meta["metrics"]["tool_errors"] == 5
    assert record.score == 0.0 and record.meta["metrics"]["well_formed"] is True


def test_a_stdio_server_that_dies_between_turns_is_restarted(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.mcp.tool_call_format = "text"
    pids: dict[str, int] = {}

    def remember_pid(body: dict[str, Any]) -> str:
        pids["pid"] = int(body["messages"][-1]["content"])
        os.kill(pids["pid"], signal.SIGKILL)
        return call("pid")

    stub_model.script(config.model_name, [call("pid"), remember_pid, "<answer>ok</answer>"])
    sampler, record = run_trajectory(config, dbs, MCPTask(question="?", answers=["ok"]))
    first, second = (int(m["content"]) for m in tool_messages(record))
    assert sampler.failed is None and record.score == 1.0
    assert first == pids["pid"] and second != first  # answered by a new server process


def test_a_server_that_cannot_come_back_fails_the_trajectory_as_infrastructure(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path, http_server: HttpToolServer,
    stub_model: StubModel,
) -> None:
    config.mcp_config = str(http_mcp_json(tmp_path, http_server))

    def kill_server(body: dict[str, Any]) -> str:
        http_server.kill()
        return call("add", a=1, b=1)

    stub_model.script(config.model_name, [call("add", a=1, b=2), kill_server])
    sampler, record = run_trajectory(config, dbs, MCPTask(question="?", answers=["2"]))
    assert isinstance(sampler.failed, ToolServerUnavailableError)
    assert sampler.failed.server == "test"
    # an infrastructure failure: handed back for a later attempt, never scored 0
    assert record.status == RecordStatus.CREATED and record.score is None
    assert record.error_kind == ErrorKind.INFRASTRUCTURE
    assert "ToolServerUnavailableError" in (record.error or "")


def test_max_turns_ends_the_trajectory(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.mcp.max_turns = 2
    stub_model.script(config.model_name, [call("add", a=1, b=1)] * 3)
    _, record = run_trajectory(config, dbs, MCPTask(question="?", answers=["2"]))
    assert record.meta["ended"] == "max_turns" and record.meta["answer"] is None
    assert record.meta["metrics"]["turns"] == 2 and len(stub_model.requests) == 2
    assert record.score == 0.0 and record.meta["metrics"]["well_formed"] is False


@pytest.mark.parametrize("policy", ["end", "reset"])
def test_max_context_tokens_ends_or_resets_the_context(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel,
    policy: str,
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.max_new_tokens = 32
    config.mcp.context_policy = policy  # type: ignore[assignment]
    config.mcp.max_tool_result_chars = 10_000
    stub_model.script(config.model_name, [call("echo", text="x" * 100, times=20),
                                          "<answer>fine</answer>"])
    # the first call's context is ~100 tokens; 2000 characters of tool result (~500 tokens)
    # push the next call past 400
    config.mcp.max_context_tokens = 400
    _, record = run_trajectory(config, dbs, MCPTask(question="Echo.", answers=["fine"]))
    first_total = stub_model.responses[0]["usage"]["total_tokens"]
    assert first_total + 32 < 400 < first_total + 2000 // 4 + 32
    if policy == "end":
        assert record.meta["ended"] == "context" and len(stub_model.requests) == 1
        assert record.score == 0.0
    else:
        assert record.meta["ended"] == "answer" and record.score == 1.0
        assert record.meta["metrics"]["context_resets"] == 1
        assert stub_model.requests[1]["messages"] == stub_model.requests[0]["messages"]
        roles = [m["role"] for m in record.meta["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "system", "user", "assistant"]
        calls = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
        assert len(convert_record_to_data_func(record, calls)) == 2  # one sequence per context


def test_first_messages_hold_the_demonstration(config: AgentTrainingConfig) -> None:
    demo = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": call("add")},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": "<answer>2</answer>"}]
    config.mcp.demonstration = demo
    sampler = MCPSampler(config)
    sampler.task = MCPTask(question="2+2?", answers=["4"], system_prompt="Be exact.")
    messages = sampler.first_messages([])
    assert messages == [{"role": "system", "content": "Be exact."}, *demo,
                        {"role": "user", "content": "2+2?"}]
    sampler.task = MCPTask(question="2+2?", answers=["4"], answer_format="boxed")
    assert "\\boxed{ANSWER}" in sampler.first_messages([])[0]["content"]


def test_trajectories_of_one_process_share_the_server_session(
    config: AgentTrainingConfig, dbs: Databases, stdio_mcp_json: Path, stub_model: StubModel
) -> None:
    config.mcp_config = str(stdio_mcp_json)
    config.num_generations = 3

    def reply(body: dict[str, Any]) -> str:
        last = body["messages"][-1]
        return "<answer>done</answer>" if last["role"] == "tool" else call("pid")

    stub_model.script(config.model_name, [reply] * 6)
    push_epoch(dbs, "train", [MCPTask(question="pid?", answers=["done"])], "mcp", lambda c: None)

    async def one() -> Record:
        async with MCPSampler(config, split="train") as sampler:
            await sampler.run()
        assert sampler.record is not None and sampler.failed is None
        return sampler.record

    async def three() -> list[Record]:
        try:
            return list(await asyncio.gather(one(), one(), one()))
        finally:
            await close_session_pools()

    records = asyncio.run(three())
    pids = {tool_messages(r)[0]["content"] for r in records}
    assert len(records) == 3 and len(pids) == 1  # one server process answered all three
