"""A stand-in OSWorld env control server for tests (FastAPI + uvicorn in a thread).

It answers the endpoints :class:`~agentrl.rollout.osworld.client.OSWorldEnvClient` uses with
OSWorld's shapes: ``/platform``, ``/screen_size``, ``/screenshot`` (a real PNG of the configured
size, different each step), ``/accessibility`` (``{"AT": xml}``), ``/execute`` (records the
command; pyautogui code "succeeds" when it parses), ``/setup/*`` (records every step), ``/reset``
and ``/evaluate``.

Its evaluator is a rule, not OSWorld's metrics: ``infeasible`` tasks score 1 when the last action
is FAIL; other tasks score 1 when at least one pyautogui action ran since the last reset, else 0.
It covers the protocol, leasing and logging; it does not run apps, setup steps or real metrics.
"""

from __future__ import annotations

import ast
import asyncio
import io
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from PIL import Image, ImageDraw

from agentrl.rollout.osworld.client import PYAUTOGUI_PREFIX

A11Y_TREE = """<desktop-frame xmlns:st="https://accessibility.ubuntu.example.org/ns/state">\
<application name="gnome-shell"><frame name="Top Bar"><push-button name="Activities" \
st:showing="true"/></frame></application><application name="{app}"><frame name="{app} window">\
<push-button name="OK" st:enabled="true"/><entry name="Search" st:focused="true"/></frame>\
</application></desktop-frame>"""


@dataclass
class StandInState:
    """What one stand-in env saw (tests read it).

    Attributes:
        name: label of this env.
        width, height: screen size in pixels.
        execute_delay_s: seconds ``/execute`` sleeps before answering (to catch a worker
            mid-episode).
        execute_calls: ``/execute`` requests received (counted on arrival).
        executed: commands run through ``/execute`` (all time).
        actions_since_reset: pyautogui code run since the last ``/reset``.
        setup_steps: ``(endpoint, body)`` of every setup call.
        resets: task ids reset for.
        evaluations: ``(task id, last action, score)`` of every evaluation.
        screenshots: screenshots served.
    """

    name: str
    width: int = 640
    height: int = 360
    execute_delay_s: float = 0.0
    executed: list[Any] = field(default_factory=list)
    actions_since_reset: list[str] = field(default_factory=list)
    setup_steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    evaluations: list[tuple[str, str, float]] = field(default_factory=list)
    screenshots: int = 0
    execute_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _png(width: int, height: int, label: str) -> bytes:
    image = Image.new("RGB", (width, height), (32, 64, 128))
    ImageDraw.Draw(image).text((10, 10), label, fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _action_code(command: Any) -> str | None:
    """The action code inside an OSWorld ``python -c`` command, or None."""
    if isinstance(command, list) and len(command) == 3 and command[:2] == ["python", "-c"]:
        prefix = PYAUTOGUI_PREFIX.format(code="")
        text = str(command[2])
        return text[len(prefix):] if text.startswith(prefix) else text
    return None


def make_app(state: StandInState) -> FastAPI:
    """The FastAPI app of one stand-in env."""
    app = FastAPI()

    @app.get("/platform")
    def platform() -> Response:
        return Response("Linux", media_type="text/plain")

    @app.post("/screen_size")
    def screen_size() -> dict[str, int]:
        return {"width": state.width, "height": state.height}

    @app.get("/screenshot")
    def screenshot() -> Response:
        with state.lock:
            state.screenshots += 1
            label = f"{state.name} #{state.screenshots}"
        return Response(_png(state.width, state.height, label), media_type="image/png")

    @app.get("/accessibility")
    def accessibility() -> dict[str, str]:
        return {"AT": A11Y_TREE.format(app="libreoffice-calc")}

    @app.post("/execute")
    async def execute(request: Request) -> dict[str, Any]:
        body = await request.json()
        with state.lock:
            state.execute_calls += 1
        if state.execute_delay_s:
            await asyncio.sleep(state.execute_delay_s)
        code = _action_code(body.get("command"))
        with state.lock:
            state.executed.append(body.get("command"))
            if code is not None:
                try:
                    ast.parse(code)
                except SyntaxError as exc:
                    return {"status": "success", "output": "", "error": str(exc), "returncode": 1}
                state.actions_since_reset.append(code)
        return {"status": "success", "output": "", "error": "", "returncode": 0}

    @app.post("/reset")
    async def reset(request: Request) -> dict[str, bool]:
        body = await request.json()
        with state.lock:
            state.resets.append(str(body.get("task_config", {}).get("id", "")))
            state.actions_since_reset.clear()
        return {"setup_done": False}

    @app.post("/setup/{kind}")
    async def setup(kind: str, request: Request) -> dict[str, str]:
        body = await request.json()
        with state.lock:
            state.setup_steps.append((kind, body))
        return {"status": "success"}

    @app.post("/evaluate")
    async def evaluate(request: Request) -> dict[str, float]:
        body = await request.json()
        task_config = body.get("task_config", {})
        last_action = str(body.get("last_action", ""))
        evaluator = task_config.get("evaluator", {})
        with state.lock:
            if evaluator.get("func") == "infeasible":
                score = 1.0 if last_action == "FAIL" else 0.0
            else:
                score = 1.0 if state.actions_since_reset else 0.0
            state.evaluations.append((str(task_config.get("id", "")), last_action, score))
        return {"score": score}

    return app


class StandInServer:
    """One stand-in env served on 127.0.0.1:<port> in a daemon thread."""

    def __init__(self, name: str, width: int = 640, height: int = 360) -> None:
        self.state = StandInState(name=name, width=width, height=height)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            make_app(self.state), host="127.0.0.1", port=self.port, log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"standin-{name}")

    def start(self) -> StandInServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stand-in server {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True  # do not wait for a hung /execute of a killed client
        self.thread.join(timeout=10)
