"""`agentrl engine serve`: it says where it serves and when it is ready, and `/v1/models` reports
the model's real context length."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.inference.conftest import stop_process_group

pytestmark = pytest.mark.slow


def read_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """The process's stdout up to the first line containing ``marker``."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            pytest.fail(f"no {marker!r} from the engine (exit {proc.poll()}):\n{seen}")
        if selector.select(timeout=left):
            seen += proc.stdout.readline()
    return seen


def test_engine_serve_prints_url_and_ready_and_reports_context_length(model_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentrl.cli import main; main()", "engine", "serve",
         "--model", str(model_dir), "--port", str(port), "--max-batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        out = read_until(proc, "ready", 180)
        url = f"http://127.0.0.1:{port}"
        assert f"at {url}: ready" in out
        models = httpx.get(f"{url}/v1/models", timeout=30).json()  # answers as soon as ready
    finally:
        stop_process_group(proc)
    declared = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    assert models["data"][0]["max_model_len"] == declared == 8192
