"""`Router`: send an LLM call to the least-loaded live service and log it as a
`DispatchedSamplingTask`.

One call of :meth:`Router.create_chat_completion`:

1. **pick** — one atomic ``find_one_and_update`` takes the UP service serving the model with the
   fewest ``running_req_count`` and a heartbeat younger than ``service_heartbeat_ttl_s``
   (external services have no heartbeat), incrementing its count. While none is UP (a weight
   update) the call waits, polling, up to ``service_wait_timeout_s``.
2. **send** — ``POST <endpoint>/v1/chat/completions`` with temperature / top_p / max_tokens from
   the config unless overridden and ``logprobs: true``; the count is decremented in ``finally``.
   Transient failures (connection errors, 408/429/5xx) are retried with tenacity, re-picking the
   service each time, up to ``request_max_attempts``.
3. **log** — exactly one :class:`DispatchedSamplingTask` is inserted: request (large images moved
   to the object store), response, completion token ids and behaviour logprobs, finish reason
   (``length`` kept as such), service, endpoint, weight version, ``created_at_step`` (the Redis
   counter ``<key_prefix>:counter:global_step``), timings, and status ``completed`` or ``failed``
   with the error.

The returned response is OpenAI-format; ``choices[0]["token_ids"]`` holds the sampled token ids
and ``choices[0]["logprobs"]["content"][i]["token_id"]`` / ``["logprob"]`` each token's id and
logprob (nats).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from pymongo import ReturnDocument
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    AsyncMongoStore,
    DispatchedSamplingTask,
    DispatchStatus,
    InferenceService,
    Record,
    ServiceStatus,
    utcnow,
)
from agentrl.databases.connections import GLOBAL_STEP
from agentrl.databases.objectstore import ObjectStore, externalize, open_object_store
from agentrl.errors import InferenceError, InferenceRequestError, NoServiceAvailableError

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (on another service when one is free)."""

REDIS_CONCURRENCY = 4
"""Most concurrent Redis reads one router makes (the step counter)."""

POLL_INTERVAL_S = 0.25
"""Seconds between looks for an UP service while none is available."""


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, InferenceRequestError) and exc.transient


def completion_tokens(response: dict[str, Any]) -> tuple[list[int], list[float], str | None]:
    """Token ids, logprobs (nats) and finish reason of the first choice of a response.

    Token ids come from ``choices[0].token_ids`` or, failing that, from
    ``logprobs.content[i].token_id``; either may be empty for services that do not return them.
    """
    choice = (response.get("choices") or [{}])[0]
    content = ((choice.get("logprobs") or {}).get("content")) or []
    logprobs = [float(item["logprob"]) for item in content if "logprob" in item]
    ids = choice.get("token_ids")
    if ids is None:
        ids = [int(item["token_id"]) for item in content if "token_id" in item]
    return [int(i) for i in ids], logprobs, choice.get("finish_reason")


class Router:
    """Routes chat completions to inference services and records each call.

    Args:
        config: timeouts, sampling defaults and the served model name.
        store: async MongoDB access (service registry, dispatch log).
        redis: async Redis client (the global step counter).

    Create it inside the event loop that uses it; call :meth:`aclose` at the end.
    """

    def __init__(
        self, config: AgentTrainingConfig, store: AsyncMongoStore, redis: aioredis.Redis
    ) -> None:
        self.config, self.store, self.redis = config, store, redis
        self.step_key = f"{config.key_prefix}:counter:{GLOBAL_STEP}"
        self._http: httpx.AsyncClient | None = None
        self._objects: ObjectStore | None = None
        # a caller's redis.asyncio pool may be small and raises when exhausted: bound our use
        self._redis_slots = asyncio.Semaphore(REDIS_CONCURRENCY)

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (created on first use)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.config.request_timeout_s,
                limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
            )
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- service choice ------------------------------------------------------------------------

    def _live_filter(self, model: str) -> dict[str, Any]:
        cutoff = time.time() - self.config.service_heartbeat_ttl_s
        # explicit $and: nx-27017 ignores the sibling fields of a top-level $or
        return {"$and": [
            {"status": ServiceStatus.UP.value},
            {"models": model},
            {"$or": [{"kind": "external"}, {"heartbeat_ts": {"$gte": cutoff}}]},
        ]}

    async def acquire(self, model: str) -> InferenceService:
        """Take the least-loaded live UP service for ``model`` (its count incremented).

        Waits while none is UP, up to ``service_wait_timeout_s``.

        Raises:
            NoServiceAvailableError: none became available in time.
        """
        started = time.monotonic()
        coll = self.store.collection(InferenceService)
        while True:
            raw = await coll.find_one_and_update(
                self._live_filter(model),
                {"$inc": {"running_req_count": 1}},
                sort=[("running_req_count", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if raw is not None:
                return InferenceService.from_mongo(raw)
            waited = time.monotonic() - started
            if waited >= self.config.service_wait_timeout_s:
                raise NoServiceAvailableError(model, waited)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def release(self, service: InferenceService) -> None:
        """Give back the slot :meth:`acquire` took on ``service``."""
        await self.store.collection(InferenceService).update_one(
            {"_id": service.id}, {"$inc": {"running_req_count": -1}}
        )

    # --- one call ------------------------------------------------------------------------------

    def build_body(
        self,
        model: str,
        messages: list[dict],
        tools: list[dict] | None,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """The chat-completions body: config sampling defaults, then ``params``, logprobs on."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "logprobs": True,
        }
        if "max_tokens" not in params and "max_completion_tokens" not in params:
            body["max_tokens"] = self.config.max_new_tokens
        if tools:
            body["tools"] = tools
        body.update(params)
        return body

    async def _send(self, service: InferenceService, body: dict[str, Any]) -> dict[str, Any]:
        headers = {}
        if service.api_key is not None:
            headers["Authorization"] = f"Bearer {service.api_key.get_secret_value()}"
        url = f"{service.endpoint.rstrip('/')}/v1/chat/completions"
        if service.kind == "external":
            body = {k: v for k, v in body.items() if k not in ("ignore_eos", "stop_token_ids")}
        try:
            resp = await self.http.post(url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise InferenceRequestError(service.endpoint, repr(exc), transient=True) from exc
        if resp.status_code >= 400:
            raise InferenceRequestError(
                service.endpoint, resp.text[:500], status_code=resp.status_code,
                transient=resp.status_code in TRANSIENT_STATUS,
            )
        try:
            data = resp.json()
        except ValueError as exc:
            raise InferenceRequestError(service.endpoint, "the response is not JSON") from exc
        if not isinstance(data, dict) or not data.get("choices"):
            raise InferenceRequestError(service.endpoint, "the response has no choices")
        return data

    async def create_chat_completion(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        *,
        record: Record | None = None,
        turn: int = 0,
        model: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Sample one chat completion on the least-loaded service and log it.

        Args:
            messages: OpenAI chat messages.
            tools: OpenAI tool definitions, passed to the chat template.
            record: the trajectory this call belongs to (its id and task id are logged).
            turn: index of this call in the trajectory.
            model: served model name (default ``config.model_name``).
            **params: request fields overriding the config (temperature, top_p, max_tokens,
                n, seed, stop, ...).

        Returns:
            The OpenAI-format response; ``choices[0]["token_ids"]`` holds the sampled ids.

        Raises:
            NoServiceAvailableError: no service was UP within ``service_wait_timeout_s``.
            InferenceRequestError: the call failed (after retries for transient errors).
        """
        model = model or self.config.model_name
        body = self.build_body(model, messages, tools, params)
        async with self._redis_slots:
            step = await self.redis.get(self.step_key)
        task = DispatchedSamplingTask(
            record_id=record.id if record else "",
            task_id=record.task_id if record else "",
            turn=turn,
            status=DispatchStatus.RUNNING,
            model=model,
            created_at_step=int(step) if step is not None else 0,
            started_at=utcnow(),
        )
        started = time.monotonic()
        service: InferenceService | None = None
        attempts = 0
        try:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.config.request_max_attempts),
                wait=wait_exponential(multiplier=0.2, max=5.0),
                retry=retry_if_exception(_is_transient),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    service = await self.acquire(model)
                    try:
                        response = await self._send(service, body)
                    finally:
                        await self.release(service)
        except (InferenceError, asyncio.CancelledError) as exc:
            task.status = (DispatchStatus.CANCELLED if isinstance(exc, asyncio.CancelledError)
                           else DispatchStatus.FAILED)
            task.error = f"{type(exc).__name__}: {exc}"
            await self._log(task, body, service, started, attempts)
            raise
        ids, logprobs, finish = completion_tokens(response)
        choice = response["choices"][0]
        choice.setdefault("token_ids", ids)
        task.status = DispatchStatus.COMPLETED
        task.response = response
        task.completion_token_ids, task.logprobs, task.finish_reason = ids, logprobs, finish
        task.weight_version = str(
            (response.get("metadata") or {}).get("weight_version") or service.weight_version
        )
        await self._log(task, body, service, started, attempts)
        return response

    async def _log(
        self,
        task: DispatchedSamplingTask,
        body: dict[str, Any],
        service: InferenceService | None,
        started: float,
        attempts: int,
    ) -> None:
        """Insert the call's one DispatchedSamplingTask (images moved to the object store)."""
        if self._objects is None:
            self._objects = open_object_store(
                self.config.oss_connection_string, str(self.config.object_store_dir)
            )
        prefix = f"dispatch/{task.record_id or 'none'}"
        task.request = await asyncio.to_thread(externalize, body, self._objects, prefix)
        if service is not None:
            task.service_id, task.endpoint = service.id, service.endpoint
            task.weight_version = task.weight_version or service.weight_version
        task.finished_at = utcnow()
        task.latency_s = time.monotonic() - started
        task.meta["attempts"] = attempts
        await self.store.insert(task)
