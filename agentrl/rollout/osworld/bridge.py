"""The desktop-env bridge: serves agentrl's ``/reset`` and ``/evaluate`` for VMs that the
``desktop-env`` package started.

A plain OSWorld VM serves observations and command execution, but OSWorld evaluates a task on the
host, inside ``DesktopEnv.evaluate()`` (its getters fetch files from the VM, its metrics compare
them). The provisioning process owns the ``DesktopEnv`` objects, so it runs this small FastAPI app
(in a daemon thread) with one route pair per env:

- ``POST /envs/{name}/reset`` ``{"task_config"}``: ``DesktopEnv.reset(task_config=...)`` reverts
  the VM to its snapshot and runs the task's setup steps; answers ``{"setup_done": true}``;
- ``POST /envs/{name}/evaluate`` ``{"task_config", "last_action"}``: appends the last action to the
  env's ``action_history`` (OSWorld's ``infeasible`` check reads it) and answers
  ``{"score": DesktopEnv.evaluate()}``.

Each env's ``bridge_url`` in the registry is ``http://<host>:<port>/envs/<name>``. Any object with
``reset(task_config=...)``, ``evaluate()`` and ``action_history`` works, which is how it is tested.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

logger = logging.getLogger(__name__)


class DesktopEnvLike(Protocol):
    """What the bridge needs of ``desktop_env.desktop_env.DesktopEnv``."""

    action_history: list[Any]

    def reset(self, task_config: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...

    def evaluate(self) -> float: ...


class ResetBody(BaseModel):
    """Body of ``/reset``."""

    task_config: dict[str, Any]


class EvaluateBody(BaseModel):
    """Body of ``/evaluate``."""

    task_config: dict[str, Any] = {}
    last_action: str = ""


def make_bridge_app(envs: dict[str, DesktopEnvLike]) -> FastAPI:
    """The FastAPI app serving ``/envs/{name}/reset`` and ``/envs/{name}/evaluate``.

    Args:
        envs: env name → DesktopEnv (or a stand-in with the same methods).
    """
    app = FastAPI(title="agentrl desktop-env bridge")
    locks = {name: threading.Lock() for name in envs}

    def get(name: str) -> DesktopEnvLike:
        if name not in envs:
            raise HTTPException(404, f"no env {name!r} on this bridge; known: {sorted(envs)}")
        return envs[name]

    @app.get("/envs")
    def list_envs() -> dict[str, list[str]]:
        return {"envs": sorted(envs)}

    @app.post("/envs/{name}/reset")
    async def reset(name: str, body: ResetBody) -> dict[str, bool]:
        env = get(name)

        def _reset() -> None:
            with locks[name]:
                env.reset(task_config=body.task_config)

        await run_in_threadpool(_reset)
        return {"setup_done": True}

    @app.post("/envs/{name}/evaluate")
    async def evaluate(name: str, body: EvaluateBody) -> dict[str, float]:
        env = get(name)

        def _evaluate() -> float:
            with locks[name]:
                if body.last_action:
                    env.action_history.append(body.last_action)
                return float(env.evaluate())

        return {"score": await run_in_threadpool(_evaluate)}

    return app


class BridgeServer:
    """Runs :func:`make_bridge_app` with uvicorn in a daemon thread.

    Args:
        envs: env name → DesktopEnv.
        host: interface to bind.
        port: port to bind (0: a free one).

    Attributes:
        base_url: ``http://<advertised host>:<port>``.
    """

    def __init__(self, envs: dict[str, DesktopEnvLike], host: str = "0.0.0.0", port: int = 0):
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        advertised = socket.gethostbyname(socket.gethostname()) if host == "0.0.0.0" else host
        self.base_url = f"http://{advertised}:{port}"
        config = uvicorn.Config(
            make_bridge_app(envs), host=host, port=port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="osworld-bridge")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once uvicorn is up (or after ``timeout_s`` seconds)."""
        self.thread.start()
        waited = 0.0
        while not self.server.started and waited < timeout_s:
            threading.Event().wait(0.05)
            waited += 0.05

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def env_url(self, name: str) -> str:
        """The ``bridge_url`` of env ``name``."""
        return f"{self.base_url}/envs/{name}"
