"""Trajectory leases: who is running a trajectory right now, kept alive by a heartbeat.

A running trajectory holds ``<key_prefix>:lease:<record_id>`` (value: the holder's token, expiry
``lease_ttl_s``) and an entry in the hash ``<key_prefix>:inflight`` (record id → the JSON claim that
restarts it). One :class:`LeaseKeeper` per process extends every lease it holds each
``heartbeat_interval_s`` in one Redis pipeline. A process killed with SIGKILL stops extending, the
lease expires, and beat's housekeeping (:func:`agentrl.rollout.epochs.requeue_expired`) sends the
claim again. A second copy of a message (Redis visibility timeout) finds the live lease and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

_EXTEND = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[3]) end
  return 1
end
return 0
"""
"""Extend our lease (or retake it if it lapsed and is free) and keep the inflight entry."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"""


def lease_key(prefix: str, name: str) -> str:
    """The Redis key of the lease ``name`` under ``prefix``."""
    return f"{prefix}:lease:{name}"


def inflight_key(prefix: str) -> str:
    """The Redis hash of in-flight claims (record id → JSON claim) under ``prefix``."""
    return f"{prefix}:inflight"


class LeaseKeeper:
    """Holds leases for one process and extends them with a heartbeat.

    Args:
        redis: an asyncio redis client (``decode_responses=True``).
        prefix: the run's ``key_prefix``.
        ttl_s: lease lifetime without a heartbeat, in seconds.
        interval_s: seconds between heartbeats (should be well under ``ttl_s``).
    """

    def __init__(
        self, redis: aioredis.Redis, prefix: str, ttl_s: float, interval_s: float
    ) -> None:
        self.redis, self.prefix = redis, prefix
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.interval_s = min(interval_s, ttl_s / 3)
        self.token = uuid.uuid4().hex
        self._held: dict[str, tuple[str, str]] = {}  # lease key -> (inflight field, claim json)
        self._task: asyncio.Task[None] | None = None
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, name: str, claim: dict[str, Any] | None = None) -> bool:
        """Take the lease ``name`` if nobody holds it.

        Args:
            name: the lease name (a record id, or ``task:<id>`` for a task lock).
            claim: the JSON-able claim that restarts the trajectory; stored in the inflight hash
                so housekeeping can re-enqueue it when the lease expires.

        Returns:
            Whether this process now holds the lease.
        """
        key = lease_key(self.prefix, name)
        if not await self.redis.set(key, self.token, nx=True, px=self.ttl_ms):
            return False
        field, payload = (name, json.dumps(claim)) if claim is not None else ("", "")
        if payload:
            await self.redis.hset(inflight_key(self.prefix), field, payload)
        self._held[key] = (field, payload)
        self._ensure_heartbeat()
        return True

    async def release(self, name: str) -> None:
        """Give the lease ``name`` up and drop its inflight entry (idempotent)."""
        key = lease_key(self.prefix, name)
        field, _ = self._held.pop(key, ("", ""))
        await self._release(keys=[key, inflight_key(self.prefix)], args=[self.token, field])

    def holds(self, name: str) -> bool:
        """Whether this keeper holds the lease ``name`` (as far as it knows)."""
        return lease_key(self.prefix, name) in self._held

    async def beat(self) -> None:
        """Extend every held lease once (one pipeline)."""
        if not self._held:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (field, payload) in list(self._held.items()):
                await self._extend(
                    keys=[key, inflight_key(self.prefix)],
                    args=[self.token, self.ttl_ms, payload, field],
                    client=pipe,
                )
            results = await pipe.execute()
        for key, ok in zip(list(self._held), results, strict=False):
            if not ok:
                logger.warning("lease %s was taken over by another holder", key)

    def _ensure_heartbeat(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except Exception:  # noqa: BLE001 - a heartbeat must survive a Redis hiccup
                logger.exception("lease heartbeat failed")

    async def aclose(self) -> None:
        """Stop the heartbeat and release every lease still held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for key in list(self._held):
            await self.release(key.removeprefix(f"{self.prefix}:lease:"))
