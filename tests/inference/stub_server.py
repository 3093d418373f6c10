"""A stub of SGLang 0.5.23's ``/v1/chat/completions`` for routing tests: many services under one
port.

``http://127.0.0.1:<port>/<sid>`` is service ``sid``. It answers in SGLang's shape
(:func:`tests.sglang_reply.sglang_chat_reply`: token ids only when asked, under
``prompt_token_ids`` / ``response_token_ids``), records each request (body and headers) and each
reply, can hold requests until a number of them has arrived (so routing decisions all happen
before any request finishes), can fail the first requests of a service with a given HTTP status,
and can answer them HTTP 200 with ``finish_reason: "abort"`` as SGLang does for an interrupted
request; :attr:`StubServer.outage` makes every service answer HTTP 500 (``"error"``) or nothing
(``"hang"``, until it is cleared) and :attr:`StubServer.delay_s` delays every answer. What it
samples is :attr:`StubServer.script` (default: ``from <sid>`` as ids 11, 12, 13).

``python -m tests.inference.stub_server --delay-s 2`` serves it on its own (the dispatch
benchmark's inference service); it prints its port and records nothing (``keep=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import free_port
from tests.sglang_reply import sglang_chat_reply

Script = Callable[[str, dict[str, Any]], tuple[str, list[int], list[int], list[float], str]]
"""``(sid, body) -> (content, prompt_ids, completion_ids, logprobs, finish_reason)``."""


def default_script(sid: str, body: dict[str, Any]) -> tuple[
        str, list[int], list[int], list[float], str]:
    """``from <sid>`` as ids 11, 12, 13 (cut to ``max_tokens``), logprob -0.5 each; the prompt
    is 4 ids per message."""
    max_tokens = int(body.get("max_tokens", 16))
    ids = [11, 12, 13][: max(1, min(3, max_tokens))]
    prompt = list(range(1, 1 + 4 * len(body.get("messages") or [])))
    return f"from {sid}", prompt, ids, [-0.5] * len(ids), "length" if max_tokens <= 3 else "stop"


class StubServer:
    """The stub, served by uvicorn on a background thread.

    Args:
        keep: record each request body, header and reply (tests read them); ``False`` keeps
            only the counts (a long benchmark).
        port: the port to serve on (default: a free one).
    """

    def __init__(self, keep: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.keep = keep
        self.counts: Counter[str] = Counter()
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.headers: dict[str, dict[str, str]] = {}
        self.fail: dict[str, tuple[int, int]] = {}  # sid -> (status, times)
        self.abort: dict[str, int] = {}  # sid -> times to answer finish_reason "abort"
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.script: Script = default_script
        self.delay_s = 0.0  # every answer waits this long (a trajectory that lasts)
        self.outage: str | None = None  # "error": HTTP 500 to all; "hang": answer nothing
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
                if self.keep:
                    self.bodies.append((sid, body))
                    self.headers[sid] = dict(request.headers)
                self._arrived += 1
                if self._arrived >= self.hold_until:
                    self._release.set()
                status, times = self.fail.get(sid, (0, 0))
                if times > 0:
                    self.fail[sid] = (status, times - 1)
                aborts = self.abort.get(sid, 0)
                if aborts > 0:
                    self.abort[sid] = aborts - 1
            if times > 0 or self.outage == "error":
                return JSONResponse({"error": "injected"}, status_code=status or 500)
            while self.outage == "hang":
                await asyncio.sleep(0.05)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            while self.hold_until and not self._release.is_set():
                await asyncio.sleep(0.01)
            content, prompt, ids, logprobs, finish = self.script(sid, body)
            if aborts > 0:  # interrupted after its first token, as /pause_generation abort does
                content, ids, logprobs, finish = "", ids[:1], logprobs[:1], "abort"
            reply = sglang_chat_reply(body, content, prompt, ids, logprobs, finish,
                                      weight_version=f"v-{sid}")
            if self.keep:
                with self._lock:
                    self.replies.append((sid, reply))
            return reply

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


def main() -> None:
    """Serve the stub until killed (``--delay-s``: seconds every answer waits)."""
    parser = argparse.ArgumentParser(description="SGLang chat-completions stub")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    stub = StubServer(keep=False, port=args.port or None)
    stub.delay_s = args.delay_s
    with stub:
        print(stub.port, flush=True)
        stub.thread.join()


if __name__ == "__main__":
    main()
