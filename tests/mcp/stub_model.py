"""A scripted model behind ``/v1/chat/completions``, answering exactly as the CPU engine does.

The CPU engine (``agentrl/inference/engine/app.py``) answers like SGLang: ``choices[i]`` with the
message, ``finish_reason``, ``matched_stop``, ``token_ids`` and, with ``logprobs: true``,
``logprobs.content[i]`` = ``{token, logprob, token_id, bytes, top_logprobs}``; plus
``prompt_token_ids``, ``usage`` and ``metadata.weight_version``. When the request carries
``tools``, ``<tool_call>`` blocks in the text come back as ``tool_calls`` (``parse_tools=False``
answers like a server without a tool parser: the blocks stay in the content).

The stub does the same with the real SmolLM2 tokenizer and chat template, but the text of each
reply comes from a script: per served model, a list of strings or callables
``(request body) -> str``, consumed one per request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import AutoTokenizer

from agentrl.inference.model_files import default_model_path
from agentrl.inference.tool_calls import parse_tool_calls
from tests.conftest import free_port

Reply = str | Callable[[dict[str, Any]], str]
"""One scripted reply: the model's raw text, or a function of the request body giving it."""

LOGPROB = -0.25
"""Behaviour logprob of every scripted token (nats)."""


class StubModel:
    """The stub, served by uvicorn on a background thread at :attr:`url`.

    Args:
        parse_tools: turn ``<tool_call>`` blocks into ``tool_calls`` when ``tools`` are sent.
    """

    def __init__(self, parse_tools: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.parse_tools = parse_tools
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                script = self.scripts.get(body.get("model", ""), [])
                reply = script.pop(0) if script else None
            if reply is None:
                return JSONResponse({"error": "the script has no reply left"}, status_code=400)
            text = reply(body) if callable(reply) else reply
            response = self.response(body, text)
            self.responses.append(response)
            return response

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def script(self, model: str, replies: list[Reply]) -> None:
        """Queue the replies of ``model``."""
        with self._lock:
            self.scripts.setdefault(model, []).extend(replies)

    def response(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        """The engine's response for a reply ``text`` (ending the turn with ``<|im_end|>``)."""
        tok = self.tokenizer
        messages = [{**m, "content": m.get("content") or ""} for m in body["messages"]]
        prompt_ids = tok.encode(tok.apply_chat_template(
            messages, tools=body.get("tools") or None, add_generation_prompt=True,
            tokenize=False), add_special_tokens=False)
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        content, tool_calls = text, []
        if body.get("tools") and self.parse_tools:
            parsed = parse_tool_calls(text)
            content, tool_calls = parsed.content, [c.to_openai() for c in parsed.calls]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        logprobs = [{"token": tok.convert_ids_to_tokens(i), "logprob": LOGPROB, "token_id": i,
                     "bytes": list(tok.decode([i]).encode()), "top_logprobs": []} for i in ids]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model"),
            "choices": [{
                "index": 0, "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "matched_stop": tok.eos_token_id, "token_ids": ids,
                "logprobs": {"content": logprobs} if body.get("logprobs") else None,
            }],
            "prompt_token_ids": prompt_ids,
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                      "total_tokens": len(prompt_ids) + len(ids)},
            "metadata": {"weight_version": "0"},
        }

    def __enter__(self) -> StubModel:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
