"""The CPU engine's HTTP API: OpenAI chat completions plus the SGLang control endpoints.

Bodies follow SGLang 0.5.23's HTTP API so :class:`~agentrl.inference.manager.InferenceManager`
and the router drive both engines the same way:

- ``GET /health``, ``GET /health_generate`` (generates one token), ``GET /get_load``,
  ``GET /v1/models`` (SGLang's ``ModelList``), ``GET /model_info`` and ``GET /get_model_info``
  (``weight_version`` among them).
- ``POST /v1/chat/completions``: messages, tools (passed to the chat template), temperature,
  top_p, max_tokens / max_completion_tokens, n, seed, stop, ignore_eos, logprobs,
  return_token_ids, return_prompt_token_ids; the response is SGLang's (see
  :mod:`agentrl.inference.engine.chat`); logprobs are ``log_softmax(logits / T)`` (nats).
- ``POST /generate`` (SGLang native, subset): ``text`` or ``input_ids``, ``sampling_params``,
  ``return_logprob`` → ``meta_info.input_token_logprobs`` (temperature 1) /
  ``output_token_logprobs`` as ``[logprob, token_id, null]`` triples. ``max_new_tokens: 0``
  scores a sequence.
- ``POST /update_weights_from_disk`` ``{model_path, weight_version?}`` →
  ``{success, message, num_paused_requests}``. As in SGLang, it waits until no request is in
  flight and holds new ones meanwhile (a writer lock over the generation requests), unless
  generation is paused, when it loads at once between two decode steps and the paused requests'
  ``weight_versions`` spans say which tokens each version sampled.
- ``/release_memory_occupation``, ``/resume_memory_occupation``, ``/pause_generation``
  ``{mode}``, ``/continue_generation``, ``/flush_cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from aiorwlock import RWLock
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from agentrl.errors import WeightUpdateError
from agentrl.inference.engine.chat import chat_response, rows_from_params
from agentrl.inference.engine.runner import GenerationRequest, ModelRunner
from agentrl.inference.engine.scheduler import BatchScheduler


class EngineState:
    """What the endpoints share: runner, scheduler, served name, and the lock that keeps weight
    updates between requests.

    Args:
        runner: the model runner (it holds the weight version).
        scheduler: the batch scheduler running on ``runner``.
        served_model_name: the model name clients ask for.
    """

    def __init__(
        self, runner: ModelRunner, scheduler: BatchScheduler, served_model_name: str
    ) -> None:
        self.runner, self.scheduler = runner, scheduler
        self.served_model_name = served_model_name
        self.model_update_lock = RWLock()

    @property
    def weight_version(self) -> str:
        """The version of the weights being served."""
        return self.runner.weight_version


def _next_version(current: str) -> str:
    """The version an update without ``weight_version`` gets."""
    return str(int(current) + 1) if current.isdigit() else f"{current}+1"


def _add_info_routes(app: FastAPI, state: EngineState) -> None:
    runner, scheduler = state.runner, state.scheduler

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/health_generate")
    async def health_generate() -> PlainTextResponse:
        if runner.loaded and not scheduler.paused:
            row = GenerationRequest(prompt_ids=[runner.pad_id], max_new_tokens=1, temperature=0)
            async with state.model_update_lock.reader_lock:
                await scheduler.submit([row])
        return PlainTextResponse("")

    @app.get("/get_load")
    async def get_load() -> list[dict[str, int]]:
        return [{"dp_rank": 0, **scheduler.load()}]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        # SGLang's ModelList of one ModelCard (id and root: the served name)
        return {"object": "list", "data": [{
            "id": state.served_model_name, "object": "model", "created": int(time.time()),
            "owned_by": "sglang", "root": state.served_model_name, "parent": None,
            "max_model_len": runner.context_length,
        }]}

    async def model_info() -> dict[str, Any]:
        return {
            "model_path": runner.model_path, "tokenizer_path": runner.model_path,
            "weights_path": runner.weights_path, "is_generation": True,
            "weight_version": state.weight_version, "served_model_name": state.served_model_name,
            "memory_released": not runner.loaded,
        }

    app.add_api_route("/model_info", model_info, methods=["GET"])
    app.add_api_route("/get_model_info", model_info, methods=["GET"])


def _add_generation_routes(app: FastAPI, state: EngineState) -> None:
    runner, scheduler = state.runner, state.scheduler

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(400, "'messages' must be a non-empty list")
        prompt_ids = runner.render_chat(messages, body.get("tools"))
        rows = rows_from_params(prompt_ids, body, int(body.get("n") or 1))
        async with state.model_update_lock.reader_lock:
            rows = await scheduler.submit(rows)
        return chat_response(runner, body, rows)

    @app.post("/generate")
    async def generate(request: Request) -> dict[str, Any]:
        body = await request.json()
        ids = body.get("input_ids")
        if ids is None:
            ids = runner.tokenizer.encode(body.get("text", ""), add_special_tokens=True)
        params = dict(body.get("sampling_params") or {})
        params.setdefault("max_new_tokens", 128)
        row = rows_from_params(ids, params, 1)[0]
        row.max_new_tokens = int(params["max_new_tokens"])
        meta: dict[str, Any] = {"id": uuid.uuid4().hex, "prompt_tokens": len(ids)}
        async with state.model_update_lock.reader_lock:
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
        meta["weight_version"] = state.weight_version
        meta["completion_tokens"] = len(row.output_ids)
        meta["finish_reason"] = {"type": row.finish_reason, "matched": row.matched_stop}
        if body.get("return_logprob"):
            meta["output_token_logprobs"] = [
                [lp, tok, None] for lp, tok in zip(row.output_logprobs, row.output_ids, strict=True)
            ]
        return {"text": row.text, "output_ids": row.output_ids, "meta_info": meta}


def _add_control_routes(app: FastAPI, state: EngineState) -> None:
    runner, scheduler = state.runner, state.scheduler

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> JSONResponse:
        body = await request.json()
        path = body.get("model_path")
        if not path:
            return JSONResponse({"success": False, "message": "model_path is required",
                                 "num_paused_requests": 0}, status_code=400)
        version = body.get("weight_version")
        version = _next_version(state.weight_version) if version is None else str(version)
        # paused: load now, between decode steps; else wait until no request is in flight
        lock = (contextlib.nullcontext() if scheduler.paused
                else state.model_update_lock.writer_lock)
        async with lock:
            try:
                await asyncio.to_thread(runner.load_weights, path, version)
            except (WeightUpdateError, OSError) as exc:
                return JSONResponse({"success": False, "message": str(exc),
                                     "num_paused_requests": 0}, status_code=400)
        return JSONResponse({"success": True,
                             "message": f"loaded weights from {path}. Weight version updated "
                                        f"to {version}.",
                             "num_paused_requests": 0})

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
        return {"message": "Generation paused successfully.", "status": "ok"}

    @app.post("/continue_generation")
    async def continue_generation() -> dict[str, Any]:
        scheduler.resume_generation()
        return {"message": "Generation continued successfully.", "status": "ok"}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> PlainTextResponse:
        return PlainTextResponse("Cache flushed.\nPlease check backend logs for more details.")


def create_app(state: EngineState) -> FastAPI:
    """The FastAPI application of the CPU engine over ``state``."""
    app = FastAPI(title="agentrl CPU engine")
    app.state.engine = state
    _add_info_routes(app, state)
    _add_generation_routes(app, state)
    _add_control_routes(app, state)
    return app
