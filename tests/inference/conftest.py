"""Fixtures of the inference tests: one CPU engine subprocess with the real SmolLM2 for the
session, the same model loaded in-process for reference forward passes, and engine helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.inference.model_files import default_model_path
from agentrl.inference.sglang import EngineClient
from tests.conftest import free_port


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the process group of ``proc`` (started with a new session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The cached SmolLM2-135M-Instruct HF directory."""
    return default_model_path()


@pytest.fixture(scope="session")
def hf_model(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2 in float32, for reference forward passes."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def engine_url(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a CPU engine subprocess serving SmolLM2 (shared by the session)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("engine") / "engine.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentrl.inference.engine", "--model", str(model_dir),
             "--port", str(port), "--max-batch-size", "16"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    client = EngineClient(url)
    try:
        client.wait_healthy(180, alive=lambda: proc.poll() is None,
                            log_tail=lambda: log_path.read_text())
        yield url
    finally:
        client.close()
        stop_process_group(proc)


def forward_logprobs(
    model: Any, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0
) -> list[float]:
    """``log_softmax(logits / temperature)[completion_ids[i]]`` given ``prompt +
    completion[:i]`` (nats) from one plain forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()  # (T, V)
    scaled = logits[len(prompt_ids) - 1 : -1] / temperature
    logprobs = torch.log_softmax(scaled, dim=-1)  # (C, V)
    return logprobs.gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1).tolist()
