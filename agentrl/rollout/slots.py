"""`SlotBoard`: the requests a process runs on each inference service, counted in Redis without a
round trip per request.

A service's load lives in the sorted set ``RedisKeys.service_slots(id)`` (member → expiry, Redis
server time in ms) and the hash beside it (``<key>:counts``, member → number of requests). A
process is one member: its token, with the number of requests it runs on that service now. A
member without a count is one request (a per-request lease, as other writers and the tests
use). Only live members count, so the requests of a killed process stop counting when its member
expires (``ttl_s`` after its last renewal): capacity cannot leak.

Taking and giving back a slot changes the process's own count in memory, and chooses the
service with the fewest requests — the process's own, exact, plus the other processes' as last
read. The board writes its counts and reads the others' in one Redis script, at most every
:data:`SYNC_S` seconds while its counts change, at every heartbeat (which renews its members),
and before choosing when the others' view is older than :data:`VIEW_MAX_AGE_S` (or does not
cover a service yet). So the Redis work is bounded per process and second, not per request; the
price is that another process's requests are seen up to :data:`SYNC_S` late (under load) or
:data:`VIEW_MAX_AGE_S` late (idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SYNC_S = 0.1
"""Seconds between two writes of a process's changed counts (one script call each)."""
VIEW_MAX_AGE_S = 1.0
"""Oldest view of the other processes' requests a choice is made on."""

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_LOAD = """
local function load(key, counts, skip)
  local members = redis.call('ZRANGEBYSCORE', key, now, '+inf')
  local total = 0
  if #members == 0 then return 0 end
  local values = redis.call('HMGET', counts, unpack(members))
  for j, m in ipairs(members) do
    if m ~= skip then total = total + (tonumber(values[j]) or 1) end
  end
  return total
end
"""

_SYNC = (
    _NOW
    + _LOAD
    + """
local out = {}
for i = 1, #KEYS, 2 do
  local key, counts = KEYS[i], KEYS[i + 1]
  local dead = redis.call('ZRANGEBYSCORE', key, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    redis.call('HDEL', counts, unpack(dead))
  end
  local mine = tonumber(ARGV[2 + (i + 1) / 2])
  if mine > 0 then
    redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
    redis.call('HSET', counts, ARGV[1], mine)
  else
    redis.call('ZREM', key, ARGV[1])
    redis.call('HDEL', counts, ARGV[1])
  end
  table.insert(out, load(key, counts, ARGV[1]))
end
return out
"""
)
"""Write this process's count on each service (KEYS: set, counts, ...; ARGV: token, ttl ms,
count per service), drop lapsed members, return the other members' requests per service."""

_LOADS = (
    _NOW
    + _LOAD
    + """
local out = {}
for i = 1, #KEYS, 2 do table.insert(out, load(KEYS[i], KEYS[i + 1], '')) end
return out
"""
)
"""Requests running on each service, every live member counted (KEYS: set, counts, ...)."""


def counts_key(slots_key: str) -> str:
    """The hash of members' request counts beside a service's slot set."""
    return f"{slots_key}:counts"


def _pairs(keys: list[str]) -> list[str]:
    return [k for key in keys for k in (key, counts_key(key))]


def slot_loads(client: redis.Redis, keys: list[str]) -> list[int]:
    """Requests running on each service whose slot set is in ``keys`` (sync; ``agentrl status``,
    the service manager)."""
    if not keys:
        return []
    return [int(n) for n in client.eval(_LOADS, 2 * len(keys), *_pairs(keys))]


class SlotBoard:
    """One process's requests per service, and its view of the other processes' (asyncio).

    Args:
        redis: an asyncio Redis client.
        token: this process's member name (the lease keeper's token).
        ttl_s: seconds a member counts without a renewal.

    Create it inside the event loop that uses it; :meth:`aclose` removes the process's members.
    """

    def __init__(self, redis: aioredis.Redis, token: str, ttl_s: float) -> None:
        self.redis, self.token = redis, token
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.mine: dict[str, int] = {}  # slot set key -> requests this process runs there
        self.others: dict[str, int] = {}  # slot set key -> the other processes' requests
        self._viewed_at = -1.0
        self._held: dict[str, str] = {}  # slot id -> slot set key
        self._ids = itertools.count()
        self._sync = redis.register_script(_SYNC)
        self._pending: asyncio.Future[None] | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.syncs = 0

    # --- slots -----------------------------------------------------------------------------------

    async def take(self, candidates: list[str], give_back: str | None = None) -> tuple[int, str]:
        """Take a slot on the least-loaded of ``candidates`` (ties: the first).

        Args:
            candidates: slot set keys (one per service), at least one.
            give_back: a slot this process holds, released first.

        Returns:
            ``(index, slot)``: the index into ``candidates`` and the slot's id (give it back with
            :meth:`drop`).

        Raises:
            RedisError: Redis did not answer and the board has never read the others' requests.
        """
        if give_back is not None:
            self.drop(give_back)
        if time.monotonic() - self._viewed_at > VIEW_MAX_AGE_S or any(
            key not in self.others for key in candidates
        ):
            await self.refresh(candidates)
        loads = [self.others.get(key, 0) + self.mine.get(key, 0) for key in candidates]
        best = loads.index(min(loads))
        key = candidates[best]
        slot = str(next(self._ids))
        self._held[slot] = key
        self.mine[key] = self.mine.get(key, 0) + 1
        self._changed()
        return best, slot

    def drop(self, slot: str) -> None:
        """Give back a slot :meth:`take` returned (idempotent)."""
        key = self._held.pop(slot, None)
        if key is not None:
            self.mine[key] -= 1
            self._changed()

    async def loads(self, keys: list[str]) -> list[int]:
        """Requests running on each service of ``keys``: this process's now, the others' as seen
        at most :data:`VIEW_MAX_AGE_S` ago."""
        if not keys:
            return []
        if time.monotonic() - self._viewed_at > VIEW_MAX_AGE_S or any(
            key not in self.others for key in keys
        ):
            await self.refresh(keys)
        return [self.others.get(k, 0) + self.mine.get(k, 0) for k in keys]

    # --- syncing with Redis ----------------------------------------------------------------------

    async def refresh(self, keys: list[str] | None = None) -> None:
        """Write this process's counts and read the others' now (concurrent callers share one
        round trip; a failure keeps the last view, and raises only when there is none)."""
        for key in keys or []:
            self.mine.setdefault(key, 0)
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._write_and_read())
        pending = self._pending
        try:
            await asyncio.shield(pending)
        except RedisError:
            if self._viewed_at < 0 or any(k not in self.others for k in keys or []):
                raise
            log.warning("could not sync the request slots; routing on the last view", exc_info=True)

    async def _write_and_read(self) -> None:
        try:
            keys = list(self.mine)
            counts = [self.mine[k] for k in keys]
            others = await self._sync(keys=_pairs(keys), args=[self.token, self.ttl_ms, *counts])
            self.others.update(zip(keys, (int(n) for n in others), strict=True))
            self._viewed_at = time.monotonic()
            self.syncs += 1
            for key, written in zip(keys, counts, strict=True):
                if written == 0 and self.mine.get(key) == 0:
                    del self.mine[key]  # stored as none (member removed): nothing to renew
        finally:
            self._pending = None

    def _changed(self) -> None:
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write_changes())

    async def _write_changes(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(SYNC_S)
            self._dirty.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the next change or heartbeat writes again
                log.warning("could not write the request slots; retrying", exc_info=True)

    async def aclose(self) -> None:
        """Stop syncing and remove this process's members (its requests stop counting)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending is not None:  # one write at a time: ours must come last
            with contextlib.suppress(Exception):
                await asyncio.shield(self._pending)
        self._held.clear()
        for key in self.mine:
            self.mine[key] = 0
        if self.mine:
            with contextlib.suppress(Exception):
                await self._write_and_read()
