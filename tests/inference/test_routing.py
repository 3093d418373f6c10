"""Routing over real MongoDB (nx-27017), Redis and HTTP: least load (slot leases in Redis),
stale heartbeats, waiting, outages waited out behind a circuit breaker, and one
DispatchedSamplingTask per call."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    DispatchStatus,
    InferenceService,
    Record,
    ServiceStatus,
    utcnow,
)
from agentrl.errors import InferenceRequestError, NoServiceAvailableError
from agentrl.inference.routing import Router
from agentrl.rollout.ledger import GlobalStep, RedisKeys
from agentrl.rollout.slots import slot_loads
from tests.inference.routing_helpers import Recorder, with_router
from tests.inference.stub_server import StubServer

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def add_service(dbs: Databases, stub: StubServer, sid: str, *, running: int = 0,
                status: ServiceStatus = ServiceStatus.UP, age_s: float = 0.0,
                model: str = "SmolLM2-135M-Instruct", **fields: Any) -> InferenceService:
    """Register a service; ``running`` requests of another (live) worker hold slots on it."""
    service = InferenceService(
        name=sid, endpoint=stub.url(sid), models=[model], status=status,
        heartbeat_at=utcnow() - timedelta(seconds=age_s),
        heartbeat_ts=time.time() - age_s, **fields,
    )
    dbs.store.insert(service)
    key = RedisKeys(dbs.config.key_prefix).service_slots(service.id)
    expiry_ms = (time.time() + 600) * 1000
    for i in range(running):
        dbs.redis.zadd(key, {f"other-{i}": expiry_ms})
    return service


def counts_by_name(dbs: Databases) -> dict[str, int]:
    """Requests running on each service (live slot leases)."""
    services = list(dbs.store.find(InferenceService))
    keys = RedisKeys(dbs.config.key_prefix)
    loads = slot_loads(dbs.redis, [keys.service_slots(s.id) for s in services])
    return {s.name: n for s, n in zip(services, loads, strict=True)}


def test_300_concurrent_calls_spread_by_least_load_and_stale_gets_none(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    config.service_heartbeat_ttl_s = 30.0
    ids = {sid: add_service(dbs, stub, sid, running=r).id
           for sid, r in (("a", 0), ("b", 20), ("c", 40))}
    add_service(dbs, stub, "stale", age_s=300)
    add_service(dbs, stub, "down", status=ServiceStatus.DOWN)
    add_service(dbs, stub, "other", model="another-model")
    GlobalStep(dbs).set(7)
    recorder = Recorder(dbs, Record(task_id="task-1", traj_id=0, epoch=1))
    record = recorder.record
    stub.hold(300)
    stub.counts.clear()

    async def run(router: Router) -> list[dict[str, Any]]:
        return await asyncio.gather(*[
            router.create_chat_completion(MESSAGES, recorder=recorder) for _ in range(300)
        ])

    try:
        responses = asyncio.run(with_router(config, dbs, run))
    finally:
        stub.hold(0)
    # 60 requests were already running: 360 in total balance to 120 per live service.
    assert dict(stub.counts) == {"a": 120, "b": 100, "c": 80}
    assert counts_by_name(dbs) == {"a": 0, "b": 20, "c": 40, "stale": 0, "down": 0, "other": 0}
    assert all(r["choices"][0]["response_token_ids"] == [11, 12, 13] for r in responses)

    tasks = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
    assert len(tasks) == 300
    assert sorted(t.turn for t in tasks) == list(range(300))
    assert {t.attempt for t in tasks} == {1}
    by_service = Counter(t.service_id for t in tasks)
    assert by_service == {ids["a"]: 120, ids["b"]: 100, ids["c"]: 80}
    task = tasks[0]
    assert task.status == DispatchStatus.COMPLETED
    assert task.task_id == "task-1" and task.created_at_step == 7
    assert task.completion_token_ids == [11, 12, 13] and task.logprobs == [-0.5] * 3
    assert task.prompt_token_ids == [1, 2, 3, 4] and task.temperature == config.temperature
    assert task.finish_reason == "stop"
    assert task.weight_version.startswith("v-")
    assert task.request["messages"] == MESSAGES and task.request["logprobs"] is True
    assert task.request["temperature"] == config.temperature
    assert task.request["max_tokens"] == config.max_new_tokens
    assert task.latency_s is not None and task.latency_s > 0
    assert task.endpoint == stub.url(task.response["choices"][0]["message"]["content"][5:])


def test_call_waits_while_every_service_is_down(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    add_service(dbs, stub, "w", status=ServiceStatus.DOWN)

    async def run(router: Router) -> dict[str, Any]:
        call = asyncio.create_task(router.create_chat_completion(MESSAGES, max_tokens=2))
        await asyncio.sleep(1.0)
        assert not call.done()
        dbs.store.collection(InferenceService).update_one(
            {"name": "w"}, {"$set": {"status": "UP"}})
        return await asyncio.wait_for(call, 30)

    out = asyncio.run(with_router(config, dbs, run))
    assert out["choices"][0]["finish_reason"] == "length"
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert task.status == DispatchStatus.COMPLETED and task.finish_reason == "length"
    assert task.request["max_tokens"] == 2


def test_transient_error_is_retried_and_logged_once(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    add_service(dbs, stub, "flaky")
    stub.fail["flaky"] = (503, 1)
    out = asyncio.run(with_router(config, dbs, lambda r: r.create_chat_completion(MESSAGES)))
    assert out["choices"][0]["message"]["content"] == "from flaky"
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert task.status == DispatchStatus.COMPLETED and task.meta["attempts"] == 2
    assert counts_by_name(dbs) == {"flaky": 0}


def test_outage_is_waited_out_behind_an_open_circuit(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    """HTTP 500 for 5 calls in a row: the circuit opens (sampling paused, said in Redis), the
    call backs off and ends with the real answer once the service recovers."""
    config.request_max_attempts, config.circuit_open_s = 3, 0.2
    add_service(dbs, stub, "sick")
    stub.fail["sick"] = (500, 5)
    paused: list[dict[str, str]] = []

    async def run(router: Router) -> dict[str, Any]:
        call = asyncio.ensure_future(router.create_chat_completion(MESSAGES))
        while not call.done():
            paused.append(dbs.redis.hgetall(RedisKeys(config.key_prefix).sampling_paused))
            await asyncio.sleep(0.2)
        return await call

    out = asyncio.run(with_router(config, dbs, run))
    assert out["choices"][0]["message"]["content"] == "from sick"
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert task.status == DispatchStatus.COMPLETED and task.meta["attempts"] == 6
    assert any("sick" in p and "circuit open" in p["sick"] for p in paused)
    assert dbs.redis.hgetall(RedisKeys(config.key_prefix).sampling_paused) == {}
    assert counts_by_name(dbs) == {"sick": 0}


def test_permanent_error_fails_the_call_and_is_recorded(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    add_service(dbs, stub, "bad")
    stub.fail["bad"] = (400, 5)
    with pytest.raises(InferenceRequestError) as info:
        asyncio.run(with_router(config, dbs, lambda r: r.create_chat_completion(MESSAGES)))
    assert info.value.status_code == 400
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert task.status == DispatchStatus.FAILED and "HTTP 400" in (task.error or "")
    assert task.meta["attempts"] == 1
    assert counts_by_name(dbs) == {"bad": 0}
    stub.fail.pop("bad")


def test_no_service_within_the_wait_limit_fails_with_a_record(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    config.service_wait_timeout_s = 0.5
    with pytest.raises(NoServiceAvailableError):
        asyncio.run(with_router(config, dbs, lambda r: r.create_chat_completion(MESSAGES)))
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert task.status == DispatchStatus.FAILED and "NoServiceAvailableError" in task.error


def test_external_service_gets_its_key_and_only_openai_params(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    add_service(dbs, stub, "ext", kind="external", age_s=3600, model="gpt-eval",
                api_key="sk-secret-123")

    async def run(router: Router) -> dict[str, Any]:
        return await router.create_chat_completion(
            MESSAGES, model="gpt-eval", temperature=0.0, ignore_eos=True)

    asyncio.run(with_router(config, dbs, run))
    assert stub.headers["ext"]["authorization"] == "Bearer sk-secret-123"
    body = [b for sid, b in stub.bodies if sid == "ext"][-1]
    assert body["temperature"] == 0.0 and "ignore_eos" not in body
    assert "return_token_ids" not in body
    (task,) = dbs.store.find(DispatchedSamplingTask)
    assert "sk-secret-123" not in str(task.to_mongo())


def test_heartbeat_written_with_set_revives_a_stale_service(
    config: AgentTrainingConfig, dbs: Databases, stub: StubServer
) -> None:
    config.service_heartbeat_ttl_s = 30.0
    config.service_wait_timeout_s = 1.0
    service = add_service(dbs, stub, "revived", age_s=300)
    recorder = Recorder(dbs, Record(task_id="task-hb", traj_id=0, epoch=1))

    async def call(router: Router) -> dict[str, Any]:
        return await router.create_chat_completion(MESSAGES, recorder=recorder)

    with pytest.raises(NoServiceAvailableError):
        asyncio.run(with_router(config, dbs, call))
    # The manager's heartbeat is a $set; on nx-27017 a $set datetime is stored as a string, so
    # routing must compare the numeric heartbeat_ts.
    dbs.store.collection(InferenceService).update_one(
        {"_id": service.id}, {"$set": {"heartbeat_at": utcnow(), "heartbeat_ts": time.time()}}
    )
    stub.counts.clear()
    response = asyncio.run(with_router(config, dbs, call))
    assert response["choices"][0]["response_token_ids"] == [11, 12, 13]
    assert dict(stub.counts) == {"revived": 1}
