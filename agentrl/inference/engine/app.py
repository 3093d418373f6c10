"""The CPU engine's HTTP API: OpenAI chat completions plus the SGLang control endpoints.

Bodies follow SGLang's documented HTTP API so :class:`~agentrl.inference.manager.InferenceManager`
drives both engines the same way:

- ``GET /health``, ``GET /health_generate`` (generates one token), ``GET /get_load``,
  ``GET /v1/models``, ``GET /get_model_info`` and ``GET /get_weight_version`` (``weight_version``).
- ``POST /v1/chat/completions``: messages, tools (passed to the chat template), temperature,
  top_p, max_tokens / max_completion_tokens, n, seed, stop, ignore_eos, logprobs. Each choice
  carries ``token_ids`` and, with ``logprobs: true``, ``logprobs.content[i]`` = ``{token, logprob,
  token_id, bytes, top_logprobs}``; logprobs are the model's raw ``log_softmax`` (nats).
- ``POST /generate`` (SGLang native, subset): ``text`` or ``input_ids``, ``sampling_params``,
  ``return_logprob`` → ``meta_info.input_token_logprobs`` / ``output_token_logprobs`` as
  ``[logprob, token_id, null]`` triples. ``max_new_tokens: 0`` scores a sequence.
- ``POST /update_weights_from_disk`` ``{model_path, weight_version?}`` →
  ``{success, message, num_paused_requests}``; ``/release_memory_occupation``,
  ``/resume_memory_occupation``, ``/pause_generation`` ``{mode}``, ``/continue_generation``,
  ``/flush_cache``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from agentrl.errors import WeightUpdateError
from agentrl.inference.engine.runner import GenerationRequest, ModelRunner
from agentrl.inference.engine.scheduler import BatchScheduler

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
"""Hermes-style tool calls: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``."""


class EngineState:
    """What the endpoints share: runner, scheduler, served name and weight version.

    Args:
        runner: the model runner.
        scheduler: the batch scheduler running on ``runner``.
        served_model_name: the model name clients ask for.
        weight_version: version of the weights loaded at start.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: BatchScheduler,
        served_model_name: str,
        weight_version: str = "0",
    ) -> None:
        self.runner, self.scheduler = runner, scheduler
        self.served_model_name = served_model_name
        self.weight_version = weight_version
        self.update_lock = asyncio.Lock()


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split Hermes-style ``<tool_call>`` blocks off ``text``.

    Returns:
        ``(content, tool_calls)``: the text without the blocks, and OpenAI-format tool calls
        (arguments as a JSON string). Blocks that are not valid JSON stay in the content.
    """
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(data, dict) or "name" not in data:
            return match.group(0)
        args = data.get("arguments", {})
        calls.append({
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": str(data["name"]),
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        })
        return ""

    content = TOOL_CALL_RE.sub(take, text)
    return (content.strip() if calls else content), calls


def _rows_from_params(
    state: EngineState, prompt_ids: list[int], params: dict[str, Any], n: int
) -> list[GenerationRequest]:
    """One :class:`GenerationRequest` per choice from OpenAI/SGLang sampling parameters."""
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens is None:
        max_tokens = params.get("max_new_tokens", 128)
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    seed = params.get("seed")
    rows = []
    for i in range(n):
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed) + i)
        rows.append(GenerationRequest(
            prompt_ids=list(prompt_ids),
            max_new_tokens=int(max_tokens),
            temperature=float(params.get("temperature", 1.0) if params.get("temperature")
                              is not None else 1.0),
            top_p=float(params.get("top_p") or 1.0),
            stop=stop,
            stop_token_ids=list(params.get("stop_token_ids") or []),
            ignore_eos=bool(params.get("ignore_eos", False)),
            generator=generator,
        ))
    return rows


def _logprob_content(runner: ModelRunner, row: GenerationRequest) -> list[dict[str, Any]]:
    content = []
    for token_id, logprob in zip(row.output_ids, row.output_logprobs, strict=True):
        token = runner.tokenizer.convert_ids_to_tokens(token_id)
        piece = runner.tokenizer.decode([token_id])
        content.append({
            "token": token,
            "logprob": logprob,
            "token_id": token_id,
            "bytes": list(piece.encode("utf-8")),
            "top_logprobs": [],
        })
    return content


def create_app(state: EngineState) -> FastAPI:
    """The FastAPI application of the CPU engine over ``state``."""
    app = FastAPI(title="agentrl CPU engine")
    app.state.engine = state
    runner, scheduler = state.runner, state.scheduler

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/health_generate")
    async def health_generate() -> PlainTextResponse:
        if runner.loaded and not scheduler.paused:
            row = GenerationRequest(prompt_ids=[runner.pad_id], max_new_tokens=1, temperature=0)
            await scheduler.submit([row])
        return PlainTextResponse("")

    @app.get("/get_load")
    async def get_load() -> list[dict[str, int]]:
        return [{"dp_rank": 0, **scheduler.load()}]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": state.served_model_name, "object": "model", "owned_by": "agentrl",
            "root": runner.model_path, "max_model_len": runner.context_length,
        }]}

    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return {
            "model_path": runner.model_path, "tokenizer_path": runner.model_path,
            "weights_path": runner.weights_path, "is_generation": True,
            "weight_version": state.weight_version, "served_model_name": state.served_model_name,
            "memory_released": not runner.loaded,
        }

    @app.get("/get_weight_version")
    async def weight_version() -> dict[str, str]:
        return {"weight_version": state.weight_version}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(400, "'messages' must be a non-empty list")
        n = int(body.get("n") or 1)
        prompt_ids = runner.render_chat(messages, body.get("tools"))
        rows = await scheduler.submit(_rows_from_params(state, prompt_ids, body, n))
        want_logprobs = bool(body.get("logprobs"))
        choices = []
        for index, row in enumerate(rows):
            content, tool_calls = parse_tool_calls(row.text) if body.get("tools") else (
                row.text, [])
            finish = row.finish_reason
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if tool_calls:
                message["tool_calls"] = tool_calls
                finish = "tool_calls" if finish == "stop" else finish
            choices.append({
                "index": index,
                "message": message,
                "finish_reason": finish,
                "matched_stop": row.matched_stop,
                "token_ids": row.output_ids,
                "logprobs": {"content": _logprob_content(runner, row)} if want_logprobs else None,
            })
        completion_tokens = sum(len(r.output_ids) for r in rows)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.served_model_name,
            "choices": choices,
            "prompt_token_ids": prompt_ids,
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt_ids) + completion_tokens,
            },
            "metadata": {"weight_version": state.weight_version},
        }

    @app.post("/generate")
    async def generate(request: Request) -> dict[str, Any]:
        body = await request.json()
        ids = body.get("input_ids")
        if ids is None:
            ids = runner.tokenizer.encode(body.get("text", ""), add_special_tokens=True)
        params = dict(body.get("sampling_params") or {})
        params.setdefault("max_new_tokens", 128)
        row = _rows_from_params(state, ids, params, 1)[0]
        row.max_new_tokens = int(params["max_new_tokens"])
        meta: dict[str, Any] = {"id": uuid.uuid4().hex, "prompt_tokens": len(ids),
                                "weight_version": state.weight_version}
        if body.get("return_logprob"):
            start = int(body.get("logprob_start_len", 0) or 0)
            scores = await asyncio.to_thread(runner.score, list(ids))
            meta["input_token_logprobs"] = [
                [lp, tok, None] for lp, tok in zip(scores[start:], ids[start:], strict=True)
            ]
        if row.max_new_tokens > 0:
            row = (await scheduler.submit([row]))[0]
        else:
            row.finish_reason = "length"
        meta["completion_tokens"] = len(row.output_ids)
        meta["finish_reason"] = {"type": row.finish_reason, "matched": row.matched_stop}
        if body.get("return_logprob"):
            meta["output_token_logprobs"] = [
                [lp, tok, None] for lp, tok in zip(row.output_logprobs, row.output_ids, strict=True)
            ]
        return {"text": row.text, "output_ids": row.output_ids, "meta_info": meta}

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> JSONResponse:
        body = await request.json()
        path = body.get("model_path")
        if not path:
            return JSONResponse({"success": False, "message": "model_path is required",
                                 "num_paused_requests": 0}, status_code=400)
        async with state.update_lock:
            try:
                await asyncio.to_thread(runner.load_weights, path)
            except (WeightUpdateError, OSError) as exc:
                return JSONResponse({"success": False, "message": str(exc),
                                     "num_paused_requests": 0}, status_code=400)
            version = body.get("weight_version")
            if version is None:
                version = str(int(state.weight_version) + 1) if state.weight_version.isdigit() \
                    else f"{state.weight_version}+1"
            state.weight_version = str(version)
        return JSONResponse({"success": True, "message": f"loaded weights from {path}",
                             "num_paused_requests": 0, "weight_version": state.weight_version})

    @app.post("/release_memory_occupation")
    async def release_memory() -> dict[str, Any]:
        await asyncio.to_thread(runner.release)
        return {"success": True, "message": "weights released"}

    @app.post("/resume_memory_occupation")
    async def resume_memory() -> dict[str, Any]:
        await asyncio.to_thread(runner.resume)
        return {"success": True, "message": "weights resumed"}

    @app.post("/pause_generation")
    async def pause_generation(request: Request) -> dict[str, Any]:
        raw = await request.body()
        mode = (json.loads(raw) if raw else {}).get("mode", "abort")
        if mode not in ("abort", "retract", "in_place"):
            raise HTTPException(400, f"mode {mode!r} is not one of abort, retract, in_place")
        scheduler.pause(mode)
        return {"success": True, "mode": mode}

    @app.post("/continue_generation")
    async def continue_generation() -> dict[str, Any]:
        scheduler.resume_generation()
        return {"success": True}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> PlainTextResponse:
        return PlainTextResponse("Cache flushed.\nPlease check backend logs for more details.")

    return app
