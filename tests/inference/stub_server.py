"""An OpenAI-compatible stub server for routing tests: many services under one port.

``http://127.0.0.1:<port>/<sid>`` is service ``sid``. It records each request (body and headers),
can hold requests until a number of them has arrived (so routing decisions all happen before any
request finishes), and can fail the first requests of a service with a given HTTP status.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import free_port


class StubServer:
    """The stub, served by uvicorn on a background thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.headers: dict[str, dict[str, str]] = {}
        self.fail: dict[str, tuple[int, int]] = {}  # sid -> (status, times)
        self.hold_until = 0
        self._lock = threading.Lock()
        self._arrived = 0
        self._release = threading.Event()
        app = FastAPI()

        @app.post("/{sid}/v1/chat/completions")
        async def chat(sid: str, request: Request) -> Any:
            body = await request.json()
            with self._lock:
                self.counts[sid] += 1
                self.bodies.append((sid, body))
                self.headers[sid] = dict(request.headers)
                self._arrived += 1
                if self._arrived >= self.hold_until:
                    self._release.set()
                status, times = self.fail.get(sid, (0, 0))
                if times > 0:
                    self.fail[sid] = (status, times - 1)
            if times > 0:
                return JSONResponse({"error": "injected"}, status_code=status)
            while self.hold_until and not self._release.is_set():
                await asyncio.sleep(0.01)
            max_tokens = int(body.get("max_tokens", 16))
            ids = [11, 12, 13][: max(1, min(3, max_tokens))]
            return {
                "id": "stub", "object": "chat.completion", "model": body.get("model"),
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": f"from {sid}"},
                    "finish_reason": "length" if max_tokens <= 3 else "stop",
                    "token_ids": ids,
                    "logprobs": {"content": [
                        {"token": str(t), "logprob": -0.5, "token_id": t, "top_logprobs": []}
                        for t in ids]},
                }],
                "metadata": {"weight_version": f"v-{sid}"},
            }

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, sid: str) -> str:
        """Endpoint of stub service ``sid``."""
        return f"http://127.0.0.1:{self.port}/{sid}"

    def hold(self, n: int) -> None:
        """Hold requests until ``n`` have arrived (0: do not hold)."""
        with self._lock:
            self.hold_until, self._arrived = n, 0
            self._release.clear()

    def __enter__(self) -> StubServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
