"""`Router`: send an LLM call to the least-loaded live service and log it as a
`DispatchedSamplingTask`.

One call of :meth:`Router.create_chat_completion`:

1. **pick** — one atomic ``find_one_and_update`` takes the UP service serving the model with the
   fewest ``running_req_count`` and a heartbeat younger than ``service_heartbeat_ttl_s``
   (services registered with ``agentrl services add`` have none), incrementing its count.
   While none is UP (a weight update) the call waits, polling, up to ``service_wait_timeout_s``.
2. **send** — ``POST <endpoint>/v1/chat/completions`` with the body of
   :func:`~agentrl.inference.protocol.build_chat_body` (config sampling defaults unless
   overridden, ``logprobs: true``, ``return_token_ids: true`` for SGLang and the CPU engine); the
   count is decremented in ``finally``. Transient failures (connection errors, 408/429/5xx, and
   HTTP 200 replies with ``finish_reason: "abort"`` or no choices) are retried with tenacity,
   re-picking the service each time, up to ``request_max_attempts``.
3. **log** — exactly one :class:`DispatchedSamplingTask` is inserted: request (large images moved
   to the object store), response, prompt and completion token ids, behaviour logprobs and the
   temperature they are of, finish reason (``length`` kept as such), service, endpoint, weight
   version(s), ``created_at_step`` (the Redis counter ``<key_prefix>:counter:global_step``),
   timings, and status ``completed`` or ``failed`` with the error.

The returned response is the service's, unchanged: with SGLang and the CPU engine,
``choices[0]["prompt_token_ids"]`` / ``["response_token_ids"]`` hold the prefilled and sampled ids
and ``choices[0]["logprobs"]["content"][i]["logprob"]`` the logprob (nats) of sampled token ``i``
(see :mod:`agentrl.inference.protocol`).
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
from agentrl.inference.protocol import (
    body_for_kind,
    build_chat_body,
    logprob_temperature,
    parse_chat_completion,
)

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (on another service when one is free)."""

REDIS_CONCURRENCY = 4
"""Most concurrent Redis reads one router makes (the step counter)."""

POLL_INTERVAL_S = 0.25
"""Seconds between looks for an UP service while none is available."""


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, InferenceRequestError) and exc.transient


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
            {"$or": [{"kind": "external"}, {"managed": False},
                     {"heartbeat_ts": {"$gte": cutoff}}]},
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
        """The chat-completions body (:func:`~agentrl.inference.protocol.build_chat_body`)."""
        return build_chat_body(self.config, model, messages, tools, params)

    async def _send(self, service: InferenceService, body: dict[str, Any]) -> dict[str, Any]:
        headers = {}
        if service.api_key is not None:
            headers["Authorization"] = f"Bearer {service.api_key.get_secret_value()}"
        url = f"{service.endpoint.rstrip('/')}/v1/chat/completions"
        body = body_for_kind(body, service.kind)
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
        parse_chat_completion(data, service.endpoint)  # raises on an aborted or empty reply
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
            The service's OpenAI-format response, unchanged.

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
        completion = parse_chat_completion(response, service.endpoint)
        task.status = DispatchStatus.COMPLETED
        task.response = response
        task.prompt_token_ids = completion.prompt_token_ids
        task.completion_token_ids = completion.completion_token_ids
        task.logprobs, task.finish_reason = completion.logprobs, completion.finish_reason
        task.temperature = logprob_temperature(body)
        task.weight_version = completion.weight_version or service.weight_version
        task.weight_versions = completion.weight_versions
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
