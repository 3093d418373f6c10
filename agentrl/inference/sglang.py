"""SGLang: the launch command built from the config, and the HTTP control calls.

:func:`build_sglang_command` turns :class:`AgentTrainingConfig` into
``python -m sglang.launch_server ...``. :class:`EngineClient` speaks SGLang's HTTP API
(``/health_generate``, ``/get_load``, ``/update_weights_from_disk``, ``/release_memory_occupation``,
...); the CPU engine answers the same endpoints, so the manager has one code path for both.
"""

from __future__ import annotations

import base64
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import EngineStartError, InferenceError, WeightUpdateError


def build_sglang_command(
    config: AgentTrainingConfig,
    model_path: str | Path,
    port: int,
    *,
    host: str | None = None,
    weight_version: str = "0",
    python: str = sys.executable,
) -> list[str]:
    """The ``sglang.launch_server`` command line of one DP group's engine.

    Args:
        config: ``inf_tp_size`` → ``--tp-size``, ``inf_ep_size`` → ``--ep-size``,
            ``inf_mem_ratio`` → ``--mem-fraction-static``, ``model_name`` →
            ``--served-model-name``, ``seed`` → ``--random-seed``, ``engine_host`` → ``--host``,
            ``inf_weights_cpu_backup`` → ``--enable-weights-cpu-backup``.
        model_path: the HF model directory to serve.
        port: the TCP port of this DP group.
        host: interface to bind (default ``config.engine_host``).
        weight_version: the version reported for the weights loaded at start (SGLang's own
            default is ``default``; the service registry starts at ``0``).
        python: the interpreter.

    Returns:
        The argv list: memory saver enabled so memory can be released and resumed, with a CPU
        copy of the weights when ``inf_weights_cpu_backup`` (else the manager pushes them again
        after a resume). Every flag exists in SGLang 0.5.23's ``ServerArgs`` (a contract test
        parses it with SGLang's own parser).
    """
    backup = ["--enable-weights-cpu-backup"] if config.inf_weights_cpu_backup else []
    return [
        python, "-m", "sglang.launch_server",
        "--model-path", str(model_path),
        "--host", host or config.engine_host,
        "--port", str(port),
        "--tp-size", str(config.inf_tp_size),
        "--ep-size", str(config.inf_ep_size),
        "--mem-fraction-static", str(config.inf_mem_ratio),
        "--served-model-name", config.model_name,
        "--enable-memory-saver",
        *backup,
        "--random-seed", str(config.seed),
        "--weight-version", weight_version,
        "--trust-remote-code",
    ]


def build_cpu_engine_command(
    config: AgentTrainingConfig,
    model_path: str | Path,
    port: int,
    *,
    weight_version: str = "0",
    python: str = sys.executable,
) -> list[str]:
    """The ``python -m agentrl.inference.engine`` command line of the CPU engine."""
    backup = ["--enable-weights-cpu-backup"] if config.inf_weights_cpu_backup else []
    return [
        python, "-m", "agentrl.inference.engine",
        "--model", str(model_path),
        "--host", config.engine_host,
        "--port", str(port),
        "--served-model-name", config.model_name,
        "--seed", str(config.seed),
        "--max-batch-size", str(config.engine_max_batch_size),
        "--batch-wait-s", str(config.engine_batch_wait_s),
        "--weight-version", weight_version,
        "--num-threads", str(config.engine_num_threads),
        *backup,
    ]


class EngineClient:
    """Synchronous calls to one engine's SGLang-compatible control endpoints.

    Args:
        endpoint: base URL, e.g. ``http://127.0.0.1:30000``.
        timeout_s: per-call timeout in seconds (weight loads take longer: see each method).
    """

    def __init__(self, endpoint: str, timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.Client(base_url=self.endpoint, timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _post(self, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
              ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"json": body or {}}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            resp = self._http.post(path, **kwargs)
        except httpx.HTTPError as exc:
            raise InferenceError(f"POST {self.endpoint}{path} failed: {exc}") from exc
        try:
            data = resp.json()
        except ValueError:
            data = {"message": resp.text}
        if resp.status_code >= 400 or (isinstance(data, dict) and data.get("success") is False):
            raise InferenceError(
                f"POST {self.endpoint}{path} answered HTTP {resp.status_code}: "
                f"{data.get('message', data) if isinstance(data, dict) else data}"
            )
        return data if isinstance(data, dict) else {"data": data}

    def healthy(self, generate: bool = False, timeout_s: float = 5.0) -> bool:
        """Whether ``/health`` (or ``/health_generate``) answers 200 within ``timeout_s``."""
        try:
            resp = self._http.get("/health_generate" if generate else "/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def wait_healthy(self, timeout_s: float, alive: Any = None, log_tail: Any = None) -> None:
        """Poll ``/health_generate`` until it answers 200.

        Args:
            timeout_s: longest wait in seconds.
            alive: optional callable; when it returns False (the process died) stop at once.
            log_tail: optional callable returning the engine's last log lines for the error.

        Raises:
            EngineStartError: the engine died or did not become healthy in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise EngineStartError(self.endpoint, "the engine process exited",
                                       log_tail() if log_tail else "")
            if self.healthy(generate=True, timeout_s=min(30.0, timeout_s)):
                return
            time.sleep(0.5)
        raise EngineStartError(self.endpoint, f"no healthy /health_generate in {timeout_s:.0f} s",
                               log_tail() if log_tail else "")

    def get_load(self) -> int:
        """Requests running and waiting in the engine (sum over its DP ranks)."""
        resp = self._http.get("/get_load")
        resp.raise_for_status()
        data = resp.json()
        items = data if isinstance(data, list) else [data]
        return int(sum(int(item.get("num_reqs", 0)) for item in items))  # running + waiting

    def weight_version(self) -> str:
        """The engine's weight version (``weight_version`` of ``GET /model_info``).

        Raises:
            InferenceError: the engine did not answer.
        """
        try:
            resp = self._http.get("/model_info")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise InferenceError(f"GET {self.endpoint}/model_info failed: {exc}") from exc
        return str(resp.json()["weight_version"])

    def update_weights_from_disk(self, model_path: str | Path, version: str,
                                 timeout_s: float = 600.0) -> dict[str, Any]:
        """``POST /update_weights_from_disk {model_path, weight_version, flush_cache}``.

        Raises:
            WeightUpdateError: the engine refused or failed to load the weights.
        """
        try:
            return self._post("/update_weights_from_disk", {
                "model_path": str(model_path), "weight_version": str(version), "flush_cache": True,
            }, timeout_s=timeout_s)
        except InferenceError as exc:
            raise WeightUpdateError(str(model_path), str(exc)) from exc

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]], version: str,
                                   tp_size: int = 1, timeout_s: float = 600.0) -> dict[str, Any]:
        """``POST /update_weights_from_tensor`` (SGLang only): tensors serialized with SGLang's
        ``MultiprocessingSerializer``, one copy per TP rank, base64 encoded.

        Raises:
            WeightUpdateError: SGLang is not installed, or the engine refused the update.
        """
        try:
            utils = importlib.import_module("sglang.srt.utils")  # optional dependency (GPU)
        except ImportError as exc:
            raise WeightUpdateError("<tensors>", "sglang is not installed") from exc
        payload = utils.MultiprocessingSerializer.serialize(named_tensors)
        encoded = base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload
        try:
            return self._post("/update_weights_from_tensor", {
                "serialized_named_tensors": [encoded] * tp_size,
                "weight_version": str(version), "flush_cache": True,
            }, timeout_s=timeout_s)
        except InferenceError as exc:
            raise WeightUpdateError("<tensors>", str(exc)) from exc

    def release_memory_occupation(self) -> None:
        """``POST /release_memory_occupation``."""
        self._post("/release_memory_occupation", {}, timeout_s=300.0)

    def resume_memory_occupation(self) -> None:
        """``POST /resume_memory_occupation``."""
        self._post("/resume_memory_occupation", {}, timeout_s=300.0)

    def pause_generation(self, mode: str = "in_place") -> None:
        """``POST /pause_generation {mode}`` (abort | retract | in_place)."""
        self._post("/pause_generation", {"mode": mode})

    def continue_generation(self) -> None:
        """``POST /continue_generation``."""
        self._post("/continue_generation", {})

    def flush_cache(self) -> None:
        """``POST /flush_cache``."""
        self._post("/flush_cache", {})
