"""InferenceManager with the real CPU engine: start, register, route, release/resume, update
weights, SIGKILL → restart, stop and SIGTERM leave no process and no UP service behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    Databases,
    DispatchedSamplingTask,
    InferenceService,
    Record,
    ServiceStatus,
)
from agentrl.inference.manager import InferenceManager
from tests.conftest import free_port
from tests.inference.conftest import forward_logprobs
from tests.inference.routing_helpers import Recorder, with_router

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say hello."}]


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def naive(moment: datetime) -> datetime:
    """``moment`` as naive UTC (nx-27017 may return stored datetimes without a zone)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def route_once(config: AgentTrainingConfig, dbs: Databases, recorder: Recorder
               ) -> dict[str, Any]:
    return asyncio.run(with_router(config, dbs, lambda router: router.create_chat_completion(
        MESSAGES, recorder=recorder, max_tokens=4)))


def manager_config(config: AgentTrainingConfig) -> AgentTrainingConfig:
    config.engine = "cpu"
    config.heartbeat_interval_s = 0.5
    config.release_drain_timeout_s = 2.0
    config.engine_start_timeout_s = 240.0
    config.engine_base_port = min(free_port(), 64000)
    return config


def test_manager_lifecycle_with_cpu_engine(
    config: AgentTrainingConfig, dbs: Databases, hf_model: tuple[Any, Any], tmp_path: Path
) -> None:
    manager_config(config)
    record = Record(task_id="t", traj_id=0, epoch=1)
    recorder = Recorder(dbs, record)
    manager = InferenceManager(config, dbs)
    with manager:
        service = manager.service
        assert service is not None and service.status == ServiceStatus.UP
        assert service.endpoint == manager.endpoint and service.models == [config.model_name]
        assert service.kind == "cpu" and service.weight_version == "0"
        first_beat = naive(service.heartbeat_at)
        wait_for(lambda: naive(manager.service.heartbeat_at) > first_beat, 10, "a heartbeat")

        out = route_once(config, dbs, recorder)
        assert 1 <= len(out["choices"][0]["response_token_ids"]) <= 4

        # release: DOWN, calls wait; resume: UP, the waiting call completes
        manager.release_memory_occupation()
        assert manager.service.status == ServiceStatus.DOWN
        info = httpx.get(f"{manager.endpoint}/get_model_info").json()
        assert info["memory_released"] is True
        result: dict[str, Any] = {}
        caller = threading.Thread(
            target=lambda: result.update(route_once(config, dbs, recorder)))
        caller.start()
        time.sleep(1.5)
        assert not result
        manager.resume_memory_occupation()
        caller.join(timeout=120)
        assert result["choices"][0]["response_token_ids"]
        assert manager.service.status == ServiceStatus.UP

        # weights from disk: the service's version becomes str(version)
        hf_model[0].save_pretrained(tmp_path / "step3")
        manager.update_weights(tmp_path / "step3", 3)
        assert manager.service.weight_version == "3"
        assert httpx.get(f"{manager.endpoint}/model_info").json()["weight_version"] == "3"

        # SIGKILL the engine: detected, restarted with the latest weights, registered UP again
        old_pid = manager.process.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: manager.restarts == 1 and manager.process is not None
                 and manager.service.status == ServiceStatus.UP, 240, "the engine restart")
        new_pid, port = manager.process.pid, manager.port
        assert new_pid != old_pid
        assert httpx.get(f"{manager.endpoint}/model_info").json()["weight_version"] == "3"
        out = route_once(config, dbs, recorder)
        assert out["metadata"]["weight_version"] == "3"

    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == "zombie"
    children = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    assert not any(f"--port {port}" in c for c in children)  # other tests' engines may run
    assert [s.status for s in dbs.store.find(InferenceService)] == [ServiceStatus.DOWN]
    tasks = list(dbs.store.find(DispatchedSamplingTask, {"record_id": record.id}))
    assert sorted(t.turn for t in tasks) == [0, 1, 2]
    assert {t.weight_version for t in tasks if t.turn == 2} == {"3"}


SIGTERM_SCRIPT = """
import sys, time
from agentrl.configs import load_config
from agentrl.databases import init_databases
from agentrl.inference.manager import InferenceManager
config = load_config()
manager = InferenceManager(config, init_databases(config)).start()
print(manager.process.pid, flush=True)
while True:
    time.sleep(1)
"""


def test_sigterm_stops_engine_and_marks_service_down(
    config: AgentTrainingConfig, dbs: Databases, tmp_path: Path
) -> None:
    manager_config(config)
    env = dict(os.environ, AGENTRL_ENGINE="cpu", AGENTRL_ENGINE_BASE_PORT=str(
        config.engine_base_port), AGENTRL_HEARTBEAT_INTERVAL_S="0.5",
        AGENTRL_OUTPUT_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        engine_pid = int(proc.stdout.readline())
        (service,) = dbs.store.find(InferenceService)
        assert service.status == ServiceStatus.UP
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == "zombie"
    (service,) = dbs.store.find(InferenceService)
    assert service.status == ServiceStatus.DOWN


def test_resume_routes_only_after_the_weights_are_restored(
    config: AgentTrainingConfig, dbs: Databases, hf_model: tuple[Any, Any], tmp_path: Path
) -> None:
    """Without a CPU weight backup the engine comes back from a release with its start weights
    (as SGLang's memory saver does): the manager loads the published weights again and checks
    the served version before the service is UP, so the call that waited is answered by them."""
    manager_config(config)
    config.inf_weights_cpu_backup = False
    model, tokenizer = hf_model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        model.save_pretrained(tmp_path / "step1")
        prompt = tokenizer.encode(tokenizer.apply_chat_template(
            MESSAGES, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        record = Record(task_id="t-resume", traj_id=0, epoch=1)
        with InferenceManager(config, dbs) as manager:
            manager.update_weights(tmp_path / "step1", 1)
            manager.release_memory_occupation()
            result: dict[str, Any] = {}
            caller = threading.Thread(
                target=lambda: result.update(route_once(config, dbs, Recorder(dbs, record))))
            caller.start()
            manager.resume_memory_occupation()
            caller.join(timeout=120)
            assert manager.service.status == ServiceStatus.UP
        choice = result["choices"][0]
        served = [c["logprob"] for c in choice["logprobs"]["content"]]
        perturbed = forward_logprobs(model, prompt, choice["response_token_ids"])
    finally:
        model.load_state_dict(state)
    base = forward_logprobs(model, prompt, choice["response_token_ids"])
    assert max(abs(a - b) for a, b in zip(served, perturbed, strict=True)) < 1e-3
    assert max(abs(a - b) for a, b in zip(served, base, strict=True)) > 1e-2
    (call,) = dbs.store.find(DispatchedSamplingTask, {"record_id": record.id})
    assert call.weight_version == "1"
