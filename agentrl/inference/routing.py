"""`Router`: send an LLM call to the least-loaded live service, wait out outages, and log it
as a `DispatchedSamplingTask` of its attempt.

One call of :meth:`Router.create_chat_completion`:

1. **pick** — the live services serving the model (UP, heartbeat younger than
   ``service_heartbeat_ttl_s``, or not managed by a trainer — external endpoints and SGLang
   nodes added with ``agentrl services add``; read from MongoDB at most every
   :data:`SERVICE_CACHE_S`) whose circuit is closed; a slot is taken on the one with the fewest
   running requests (:class:`~agentrl.rollout.slots.SlotBoard`: this process's requests counted
   in memory and written to Redis as one expiring member per process, at most every
   :data:`~agentrl.rollout.slots.SYNC_S` and at each heartbeat, with the other processes'
   requests read back in the same round trip), so the requests of a killed worker stop counting
   after ``lease_ttl_s``. While no service is routable (a weight update, an outage) the call
   waits.
2. **send** — ``POST <endpoint>/v1/chat/completions`` with the body of
   :func:`~agentrl.inference.protocol.build_chat_body` (config sampling defaults unless
   overridden, ``logprobs: true``, ``return_token_ids: true`` for SGLang and the CPU engine). A
   transient failure (connection error, timeout, 408/429/5xx, an HTTP 200 reply with
   ``finish_reason: "abort"`` or no choices) counts against the service's circuit breaker:
   after ``request_max_attempts`` in a row the circuit opens for ``circuit_open_s`` (doubling
   while the service keeps failing), then one probe request is let through. The call backs off
   (exponential, capped, with jitter) and tries again, on any routable service, until
   ``service_wait_timeout_s`` has passed: an outage is waited out, not scored. The reason is
   kept in Redis (``RedisKeys.sampling_paused``) for ``agentrl status`` and logged.
3. **log** — the call's DispatchedSamplingTask (request with large images moved to the object
   store, response, prompt and completion token ids, behaviour logprobs and the temperature
   they are of, finish reason, service, endpoint, weight version(s), ``created_at_step``,
   timings) goes ``pending → running → completed | failed | cancelled`` through its attempt
   (:class:`CallRecorder`, the ledger's write buffer); a call made outside a trajectory is
   inserted once when it ends.

The returned response is the service's, unchanged: with SGLang and the CPU engine,
``choices[0]["prompt_token_ids"]`` / ``["response_token_ids"]`` hold the prefilled and sampled ids
and ``choices[0]["logprobs"]["content"][i]["logprob"]`` the logprob (nats) of sampled token ``i``
(see :mod:`agentrl.inference.protocol`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aioredis
from pymongo.errors import PyMongoError

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import (
    AsyncMongoStore,
    DispatchedSamplingTask,
    DispatchStatus,
    InferenceService,
    ServiceStatus,
    utcnow,
)
from agentrl.databases.objectstore import (
    ObjectStore,
    externalize,
    has_blobs,
    open_object_store,
)
from agentrl.errors import InferenceRequestError, NoServiceAvailableError
from agentrl.inference.protocol import (
    body_for_kind,
    build_chat_body,
    logprob_temperature,
    parse_chat_completion,
)
from agentrl.rollout.leases import LeaseKeeper
from agentrl.rollout.ledger import RedisKeys

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (on another service when one is free)."""

SERVICE_CACHE_S = 1.0
"""Seconds a process reuses the list of live services of a model."""

POLL_INTERVAL_S = 0.25
"""Seconds between looks for a routable service while none is."""

BACKOFF_MAX_S = 10.0
"""Longest pause between two tries of a call during an outage, in seconds."""

CIRCUIT_OPEN_MAX_S = 60.0
"""Longest time an open circuit keeps a failing service out of routing, in seconds."""

KEEPALIVE_S = 60.0
"""Seconds an idle keep-alive connection to a service stays open."""
PAUSED_TTL_S = 120.0
"""Seconds a 'sampling paused' reason stays in Redis unless renewed."""


class CallRecorder(Protocol):
    """What the router needs of the attempt a call belongs to (the ledger's ``Attempt``)."""

    @property
    def record_id(self) -> str: ...

    @property
    def task_id(self) -> str: ...

    @property
    def number(self) -> int: ...

    def check_lease(self) -> None: ...

    def next_turn(self) -> int: ...

    def log_call(self, call: DispatchedSamplingTask) -> None: ...


@dataclass
class Circuit:
    """The circuit breaker of one service in this process.

    Attributes:
        failures: transient failures in a row.
        open_until: monotonic time before which the service gets no call (0: closed).
        open_s: how long the next opening lasts.
        probing: a probe request is in flight (half-open).
    """

    failures: int = 0
    open_until: float = 0.0
    open_s: float = 0.0
    probing: bool = False

    def allows(self, now: float) -> bool:
        """Whether a call may go to the service now (closed, or half-open with no probe)."""
        return self.open_until == 0.0 or (now >= self.open_until and not self.probing)


class Router:
    """Routes chat completions to inference services and records each call.

    Args:
        config: timeouts, sampling defaults, the served model name, circuit settings.
        store: async MongoDB access (service registry; calls made outside a trajectory).
        redis: async Redis client (the paused reasons, the step cache).
        leases: the process's lease keeper (request slots are leases).
        step: returns the trainer's global step (``created_at_step``); ``None`` reads Redis.

    Create it inside the event loop that uses it; call :meth:`aclose` at the end.
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        store: AsyncMongoStore,
        redis: aioredis.Redis,
        leases: LeaseKeeper,
        step: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.config, self.store, self.redis, self.leases = config, store, redis, leases
        self.keys = RedisKeys(config.key_prefix)
        self._step = step
        self._http: aiohttp.ClientSession | None = None
        self._objects: ObjectStore | None = None
        self._services: dict[str, tuple[float, list[InferenceService]]] = {}
        self._service_reads: dict[str, asyncio.Future[list[InferenceService]]] = {}
        self.circuits: dict[str, Circuit] = {}

    @property
    def http(self) -> aiohttp.ClientSession:
        """The process's HTTP client (created on first use, inside the running event loop).

        aiohttp's connection pool hands out a keep-alive connection in constant time, so the
        client's cost per request does not grow with the number of requests in flight (httpx's
        pool bookkeeping did: encode/httpcore#1035). No limit on connections: admission and the
        services' slots bound the requests in flight.
        """
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                               keepalive_timeout=KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
                json_serialize=json.dumps,
            )
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.close()
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

    async def live_services(self, model: str) -> list[InferenceService]:
        """The UP services of ``model`` with a fresh heartbeat (cached :data:`SERVICE_CACHE_S`;
        concurrent callers of a stale entry share one query; while MongoDB does not answer,
        the last list seen)."""
        cached = self._services.get(model)
        if cached is not None and time.monotonic() - cached[0] < SERVICE_CACHE_S:
            return cached[1]
        pending = self._service_reads.get(model)
        if pending is None:
            pending = asyncio.ensure_future(self._read_services(model))
            self._service_reads[model] = pending
        return await asyncio.shield(pending)

    async def _read_services(self, model: str) -> list[InferenceService]:
        cached = self._services.get(model)
        coll = self.store.collection(InferenceService)
        try:
            services = [InferenceService.from_mongo(raw)
                        async for raw in coll.find(self._live_filter(model))]
        except PyMongoError:
            if cached is None:
                raise
            log.warning("service registry unreachable; routing to the %d services last seen",
                        len(cached[1]))
            services = cached[1]  # MongoDB is down: the services themselves may well be up
        finally:
            self._service_reads.pop(model, None)
        self._services[model] = (time.monotonic(), services)
        return services

    async def acquire(
        self, model: str, deadline: float, give_back: str | None = None
    ) -> tuple[InferenceService, str]:
        """Take a slot on the least-loaded routable service for ``model``.

        Waits while none is routable (DOWN, stale heartbeat, open circuit), until the
        monotonic ``deadline``.

        Returns:
            ``(service, slot)``: give the slot back with :meth:`release`.

        Raises:
            NoServiceAvailableError: none became routable before the deadline.
        """
        started = time.monotonic()
        while True:
            now = time.monotonic()
            services = [s for s in await self.live_services(model)
                        if self.circuits.setdefault(s.id, Circuit()).allows(now)]
            if services:
                random.shuffle(services)  # ties go to a random service, not always the first
                index, slot = await self.leases.take_slot(
                    [self.keys.service_slots(s.id) for s in services], give_back=give_back)
                service = services[index]
                circuit = self.circuits[service.id]
                if circuit.open_until:
                    circuit.probing = True
                return service, slot
            if give_back is not None:
                await self.leases.drop_slot(give_back)
                give_back = None
            if now >= deadline:
                raise NoServiceAvailableError(model, now - started)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def release(self, slot: str) -> None:
        """Give back a slot :meth:`acquire` took."""
        await self.leases.drop_slot(slot)

    # --- circuit breaker -----------------------------------------------------------------------

    async def _failed(self, service: InferenceService, error: InferenceRequestError) -> None:
        """Count a transient failure; open the circuit after ``request_max_attempts``."""
        circuit = self.circuits.setdefault(service.id, Circuit())
        circuit.failures += 1
        circuit.probing = False
        if circuit.open_until or circuit.failures >= self.config.request_max_attempts:
            circuit.open_s = min(CIRCUIT_OPEN_MAX_S, max(self.config.circuit_open_s,
                                                         circuit.open_s * 2))
            circuit.open_until = time.monotonic() + circuit.open_s
            log.warning("sampling paused on %s: circuit open for %.0f s after %d failures (%s)",
                        service.name, circuit.open_s, circuit.failures, error)
            await self._say_paused(service, f"circuit open after {circuit.failures} failures: "
                                            f"{error}")

    async def _succeeded(self, service: InferenceService) -> None:
        circuit = self.circuits.setdefault(service.id, Circuit())
        reopened = bool(circuit.open_until)
        self.circuits[service.id] = Circuit()
        if reopened:
            log.warning("sampling resumed on %s", service.name)
            try:
                await self.redis.hdel(self.keys.sampling_paused, service.name)
            except Exception:  # noqa: BLE001 - status information only
                log.debug("could not clear the paused reason", exc_info=True)

    async def _say_paused(self, service: InferenceService, reason: str) -> None:
        """Keep why sampling waits in Redis (``agentrl status`` shows it)."""
        try:
            value = json.dumps({"reason": reason[:500], "since": time.time()})
            await self.redis.hset(self.keys.sampling_paused, service.name, value)
            await self.redis.expire(self.keys.sampling_paused, int(PAUSED_TTL_S))
        except Exception:  # noqa: BLE001 - status information only
            log.debug("could not store the paused reason", exc_info=True)

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
            async with self.http.post(url, json=body, headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InferenceRequestError(service.endpoint, repr(exc), transient=True) from exc
        if status >= 400:
            raise InferenceRequestError(
                service.endpoint, raw[:500].decode("utf-8", "replace"), status_code=status,
                transient=status in TRANSIENT_STATUS,
            )
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InferenceRequestError(service.endpoint, "the response is not JSON") from exc
        parse_chat_completion(data, service.endpoint)  # raises on an aborted or empty reply
        return data

    async def create_chat_completion(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        *,
        recorder: CallRecorder | None = None,
        model: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Sample one chat completion on the least-loaded service and log it.

        Args:
            messages: OpenAI chat messages.
            tools: OpenAI tool definitions, passed to the chat template.
            recorder: the attempt this call belongs to (it numbers and stores the call).
            model: served model name (default ``config.model_name``).
            **params: request fields overriding the config (temperature, top_p, max_tokens,
                n, seed, stop, ...).

        Returns:
            The service's OpenAI-format response, unchanged.

        Raises:
            NoServiceAvailableError: no service answered within ``service_wait_timeout_s``.
            InferenceRequestError: the service refused the request for good (HTTP 4xx).
            LeaseLostError: the attempt lost its trajectory to a newer one.
        """
        model = model or self.config.model_name
        body = self.build_body(model, messages, tools, params)
        if recorder is not None:
            recorder.check_lease()
        task = DispatchedSamplingTask(
            record_id=recorder.record_id if recorder else "",
            task_id=recorder.task_id if recorder else "",
            attempt=recorder.number if recorder else 0,
            turn=recorder.next_turn() if recorder else 0,
            status=DispatchStatus.PENDING,
            model=model,
            created_at_step=await self._global_step(),
            started_at=utcnow(),
        )
        # images go to the object store on a thread; a body without any is stored as a copy (the
        # call document is built later, when its batch is written, and samplers go on appending
        # to the messages they passed)
        task.request = await asyncio.to_thread(
            externalize, body, self.objects, f"dispatch/{task.record_id or 'none'}",
        ) if has_blobs(body) else copy.deepcopy(body)
        self._log(task, recorder)
        started = time.monotonic()
        try:
            response, service = await self._call(model, body, task, recorder)
        except (Exception, asyncio.CancelledError) as exc:
            task.status = (DispatchStatus.CANCELLED if isinstance(exc, asyncio.CancelledError)
                           else DispatchStatus.FAILED)
            task.error = f"{type(exc).__name__}: {exc}"
            self._finish_log(task, recorder, started)
            if recorder is None:
                await self.store.insert(task)
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
        self._finish_log(task, recorder, started)
        if recorder is None:
            await self.store.insert(task)
        return response

    async def _call(
        self,
        model: str,
        body: dict[str, Any],
        task: DispatchedSamplingTask,
        recorder: CallRecorder | None,
    ) -> tuple[dict[str, Any], InferenceService]:
        """Send ``body`` until a service answers (see the module docstring, steps 1-2); the
        number of tries is kept in ``task.meta["attempts"]``.

        Returns:
            ``(response, service)``.
        """
        deadline = time.monotonic() + self.config.service_wait_timeout_s
        pause, tries = 0.5, 0
        while True:
            service, slot = await self.acquire(model, deadline)
            tries += 1
            task.meta["attempts"] = tries
            if task.status == DispatchStatus.PENDING or task.service_id != service.id:
                task.status, task.service_id, task.endpoint = (
                    DispatchStatus.RUNNING, service.id, service.endpoint)
                self._log(task, recorder)
            try:
                response = await self._send(service, body)
            except InferenceRequestError as exc:
                if not exc.transient:
                    raise
                await self._failed(service, exc)
                if time.monotonic() >= deadline:
                    raise NoServiceAvailableError(model, self.config.service_wait_timeout_s
                                                  ) from exc
                log.info("call to %s failed (%s); retrying in %.1f s", service.name, exc, pause)
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(pause * 2, BACKOFF_MAX_S)
                if recorder is not None:
                    recorder.check_lease()
                continue
            finally:
                await self.release(slot)
            await self._succeeded(service)
            return response, service

    @property
    def objects(self) -> ObjectStore:
        """The object store for large request fields (opened on first use)."""
        if self._objects is None:
            self._objects = open_object_store(
                self.config.oss_connection_string, str(self.config.object_store_dir))
        return self._objects

    async def _global_step(self) -> int:
        if self._step is not None:
            return await self._step()
        value = await self.redis.get(self.keys.global_step)
        return int(value) if value is not None else 0

    def _log(self, task: DispatchedSamplingTask, recorder: CallRecorder | None) -> None:
        """Write the call's current state through its attempt (nothing outside one)."""
        if recorder is not None:
            task.updated_at = utcnow()
            recorder.log_call(task)

    def _finish_log(
        self, task: DispatchedSamplingTask, recorder: CallRecorder | None, started: float
    ) -> None:
        task.finished_at = utcnow()
        task.latency_s = time.monotonic() - started
        self._log(task, recorder)
