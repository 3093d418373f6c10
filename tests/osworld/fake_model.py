"""A scripted OpenAI-compatible chat server for OSWorld tests (FastAPI + uvicorn in a thread).

It answers ``/v1/chat/completions`` with a pyautogui click on the first step of an episode and
``DONE`` once the prompt lists previous actions, in SGLang 0.5.23's shape (token ids only when
the request asks for them, see :func:`tests.sglang_reply.sglang_chat_reply`), so episodes are
deterministic. It also serves ``/health_generate``.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from tests.sglang_reply import sglang_chat_reply

CLICK = "```python\npyautogui.click(320, 180)\n```"
DONE = "```DONE```"


def _text_of(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


def make_app(requests: list[dict[str, Any]], reply: str | None) -> FastAPI:
    app = FastAPI()

    @app.get("/health_generate")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        requests.append(body)
        done = "Your previous actions" in _text_of(body["messages"])
        text = reply if reply is not None else (DONE if done else CLICK)
        ids = list(range(10, 10 + len(text) // 4))
        prompt = list(range(1, 1 + 4 * len(body["messages"])))
        return sglang_chat_reply(body, text, prompt, ids, [-0.5] * len(ids))

    return app


class FakeModelServer:
    """The scripted model on 127.0.0.1:<port>; ``requests`` holds every request body.

    Args:
        reply: answer this text to every request instead of the click-then-DONE script.
    """

    def __init__(self, reply: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(make_app(self.requests, reply), host="127.0.0.1",
                                port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="fake-model")

    def start(self) -> FakeModelServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake model server {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
