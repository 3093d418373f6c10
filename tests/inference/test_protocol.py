"""SGLang's reply fields as the Router reads and stores them; aborted replies are retried."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    InferenceService,
    Record,
    ServiceStatus,
)
from agentrl.errors import UnusableResponseError
from agentrl.inference.protocol import logprob_temperature, parse_chat_completion
from tests.inference.routing_helpers import Recorder, with_router
from tests.inference.stub_server import StubServer
from tests.sglang_reply import sglang_chat_reply

MESSAGES = [{"role": "user", "content": "hi"}]
ASKED = {"messages": MESSAGES, "logprobs": True, "return_token_ids": True}


def test_parse_reads_sglang_fields() -> None:
    reply = sglang_chat_reply(ASKED, "ok", [5, 6], [7, 8], [-0.1, -0.2], "length",
                              weight_version="4")
    completion = parse_chat_completion(reply, "http://e")
    assert completion.prompt_token_ids == [5, 6] and completion.completion_token_ids == [7, 8]
    assert completion.logprobs == [-0.1, -0.2] and completion.finish_reason == "length"
    assert completion.weight_version == "4" and completion.weight_versions == []
    # an update while the request was paused: the oldest version and every span are kept
    spans = [{"version": "4", "start": 0, "end": 1}, {"version": "5", "start": 1, "end": 2}]
    reply["metadata"] = {"weight_version": "5", "weight_versions": spans}
    completion = parse_chat_completion(reply, "http://e")
    assert completion.weight_version == "4" and completion.weight_versions == spans
    # ids only when asked: a reply to a plain request stores none
    plain = sglang_chat_reply({"messages": MESSAGES, "logprobs": True}, "ok", [5], [7], [-0.1])
    assert parse_chat_completion(plain, "http://e").completion_token_ids == []


def test_aborted_or_empty_replies_are_transient_errors() -> None:
    aborted = sglang_chat_reply(ASKED, "", [5], [7], [-0.1], "abort")
    with pytest.raises(UnusableResponseError) as info:
        parse_chat_completion(aborted, "http://e")
    assert info.value.transient and info.value.finish_reason == "abort"
    with pytest.raises(UnusableResponseError, match="no choices"):
        parse_chat_completion({**aborted, "choices": []}, "http://e")


def test_logprob_temperature_is_one_for_greedy_calls() -> None:
    assert logprob_temperature({"temperature": 0.7}) == 0.7
    assert logprob_temperature({"temperature": 0.0}) == 1.0
    assert logprob_temperature({}) is None


def test_aborted_reply_is_retried_and_only_the_retry_is_stored(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.temperature = 0.7
    record = Record(task_id="t-abort", traj_id=0, epoch=1)
    with StubServer() as stub:
        dbs.store.insert(InferenceService(name="s", endpoint=stub.url("s"), kind="sglang",
                                          models=[config.model_name], status=ServiceStatus.UP))
        stub.abort["s"] = 1

        response = asyncio.run(with_router(config, dbs, lambda router: (
            router.create_chat_completion(MESSAGES, recorder=Recorder(dbs, record)))))
    assert [r["choices"][0]["finish_reason"] for _, r in stub.replies] == ["abort", "stop"]
    assert response == stub.replies[1][1]
    (call,) = dbs.store.find(DispatchedSamplingTask, {"record_id": record.id})
    assert call.status == DispatchStatus.COMPLETED and call.meta["attempts"] == 2
    assert call.finish_reason == "stop" and call.completion_token_ids == [11, 12, 13]
    assert call.prompt_token_ids == [1, 2, 3, 4] and call.temperature == 0.7
    assert call.response == stub.replies[1][1]
