"""Expiring leases in Redis, kept alive by one heartbeat per process.

A lease is a member of a sorted set whose score is its expiry (Redis server time, milliseconds).
Two kinds share the mechanism:

- **owned leases** (trajectories, stateful task locks): the member's owner token sits in a hash
  beside the set, and an optional payload (the JSON claim that restarts a trajectory) in a second
  hash. Taking one fails while another owner's lease is live; extending one fails once another
  owner took it over (or, while Redis holds the run's state, once nobody owns it any more), and
  the keeper then reports it lost. A member with no owner and a score
  in the past or near future is a claim waiting to be re-sent (see
  :meth:`LeaseKeeper.hand_back`); :func:`take_expired` collects those whose time has come.
- **slots** (requests running on an inference service): the process's count of requests per
  service, kept by its :class:`~agentrl.rollout.slots.SlotBoard` (a member per process, no
  round trip per request); a killed worker's requests stop counting when its member expires.

One :class:`LeaseKeeper` per process extends everything it holds every ``interval_s`` in one
Redis pipeline, so the Redis work of the heartbeat grows with the leases held, not with time.
The key names come from :class:`agentrl.rollout.ledger.RedisKeys`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from agentrl.rollout.slots import SlotBoard, slot_loads

__all__ = [
    "Expired", "LeaseKeeper", "OwnedSet", "SlotBoard", "owned_members", "slot_loads",
    "take_expired",
]

log = logging.getLogger(__name__)

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_ACQUIRE = _NOW + """
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if exp and tonumber(exp) > now and owner then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 1
"""
"""Take an owned lease unless a live one exists, ours included: two trajectories of one process
exclude each other too (KEYS: set, owners, payloads)."""

_EXTEND = _NOW + """
local out = {}
local lost_redis = redis.call('EXISTS', KEYS[4]) == 0
for i = 3, #ARGV, 2 do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[1] or (not owner and lost_redis) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""
"""Extend owned leases; 0 for the ones this owner lost. A lease nobody owns is retaken only while
Redis lacks the run's ``alive`` marker (KEYS[4]): Redis came back empty and running attempts
re-register before housekeeping rebuilds the claims. With the marker present, a missing owner
means housekeeping handed the lease out (it lapsed) or a newer attempt finished: lost."""

_RELEASE = _NOW + """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
end
return 1
"""
"""Give an owned lease up: forget it, or (ARGV[3] = delay, ms) leave its payload, due for
re-sending after the delay."""

_TAKE_EXPIRED = _NOW + """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, m in ipairs(members) do
  local payload = redis.call('HGET', KEYS[3], m)
  local owned = redis.call('HEXISTS', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
  if payload then table.insert(out, payload); table.insert(out, owned) end
end
return out
"""
"""Remove up to ARGV[1] lapsed members; return each payload followed by 1 when the member had
an owner (a lapsed lease), 0 when not (a due hand-back). Work ∝ what expired."""


@dataclass(frozen=True)
class OwnedSet:
    """The three keys of a family of owned leases.

    Attributes:
        leases: sorted set member → expiry (ms).
        owners: hash member → owner token.
        payloads: hash member → JSON payload (the claim), kept until the member is forgotten.
        alive: the key whose absence says Redis lost the run's state (see ``_EXTEND``).
    """

    leases: str
    owners: str
    payloads: str
    alive: str

    @property
    def keys(self) -> list[str]:
        """The keys in the order the scripts take them."""
        return [self.leases, self.owners, self.payloads]


@dataclass
class Expired:
    """What :func:`take_expired` collected: payloads of lapsed leases (their owner stopped
    renewing: a dead or frozen process) and of due hand-backs (a worker gave the claim back to
    be sent again later: a retry after a backoff, a stopping worker)."""

    lapsed: list[str] = field(default_factory=list)
    due: list[str] = field(default_factory=list)


def take_expired(client: redis.Redis, owned: OwnedSet, limit: int = 1000) -> Expired:
    """Remove lapsed leases and due hand-backs of ``owned`` and return their payloads (sync).

    Used by housekeeping: its Redis work grows with the number expired, not with the number held.
    """
    result = client.eval(_TAKE_EXPIRED, 3, *owned.keys, limit) or []
    expired = Expired()
    for payload, had_owner in zip(result[::2], result[1::2], strict=True):
        text = payload.decode() if isinstance(payload, bytes) else str(payload)
        (expired.lapsed if int(had_owner) else expired.due).append(text)
    return expired


def owned_members(client: redis.Redis, owned: OwnedSet) -> set[str]:
    """Members of ``owned`` that have an owner now (held by a live or lapsing process)."""
    return {m.decode() if isinstance(m, bytes) else str(m) for m in client.hkeys(owned.owners)}


class LeaseKeeper:
    """Holds one process's leases and slots and extends them with a heartbeat.

    Args:
        redis: an asyncio Redis client.
        ttl_s: lifetime of a lease or slot without a heartbeat, in seconds.
        interval_s: seconds between heartbeats (at most a third of ``ttl_s``).
        on_lost: called with ``(owned, member)`` when a heartbeat finds that another owner took
            an owned lease over (the holder must stop).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        ttl_s: float,
        interval_s: float,
        on_lost: Callable[[OwnedSet, str], None] | None = None,
    ) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.interval_s = min(interval_s, ttl_s / 3)
        self.token = uuid.uuid4().hex
        self.on_lost = on_lost
        self._owned: dict[tuple[OwnedSet, str], str] = {}  # (set, member) -> payload
        self.slots = SlotBoard(redis, self.token, ttl_s)
        self._task: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    # --- owned leases ----------------------------------------------------------------------------

    async def acquire(self, owned: OwnedSet, member: str, payload: str = "") -> bool:
        """Take the lease ``member`` of ``owned`` unless a live lease on it exists.

        Args:
            owned: the lease family.
            member: the lease name (a record id, a task id).
            payload: kept beside the lease until it is forgotten (the claim that restarts it).

        Returns:
            Whether this process holds it now.
        """
        ok = await self._acquire(keys=owned.keys, args=[member, self.token, self.ttl_ms, payload])
        if not ok:
            return False
        self._owned[(owned, member)] = payload
        self._ensure_heartbeat()
        return True

    async def release(self, owned: OwnedSet, member: str, due_in_s: float | None = None) -> bool:
        """Give the lease ``member`` up.

        Args:
            owned: the lease family.
            member: the lease name.
            due_in_s: ``None`` forgets the lease and its payload; a number keeps the payload
                with no owner, due for re-sending that many seconds from now (0: at once).

        Returns:
            Whether this process still held it.
        """
        self._owned.pop((owned, member), None)
        delay = "" if due_in_s is None else str(max(0, int(due_in_s * 1000)))
        return bool(await self._release(keys=owned.keys, args=[self.token, member, delay]))

    def holds(self, owned: OwnedSet, member: str) -> bool:
        """Whether this keeper holds ``member`` (as far as the last heartbeat knows)."""
        return (owned, member) in self._owned

    # --- slots -----------------------------------------------------------------------------------

    async def take_slot(
        self, candidates: list[str], give_back: str | None = None
    ) -> tuple[int, str]:
        """Take a slot on the least-loaded set of ``candidates`` (:meth:`SlotBoard.take`).

        Args:
            candidates: slot set keys (one per inference service), at least one.
            give_back: a slot this process holds, released first.

        Returns:
            ``(index, slot)``: the index into ``candidates`` of the service the slot was taken
            on (ties: the first) and the slot's id (give it to :meth:`drop_slot`).
        """
        taken = await self.slots.take(candidates, give_back)
        self._ensure_heartbeat()
        return taken

    async def drop_slot(self, member: str) -> None:
        """Release a slot taken with :meth:`take_slot` (idempotent)."""
        self.slots.drop(member)

    async def loads(self, keys: list[str]) -> list[int]:
        """Requests running on each service of ``keys`` (:meth:`SlotBoard.loads`)."""
        return await self.slots.loads(keys)

    # --- heartbeat -------------------------------------------------------------------------------

    async def beat(self) -> None:
        """Extend every held lease once (one pipeline) and renew the process's request counts;
        report leases taken over."""
        if self.slots.mine:
            await self.slots.refresh()
        by_set: dict[OwnedSet, list[tuple[str, str]]] = {}
        for (owned, member), payload in list(self._owned.items()):
            by_set.setdefault(owned, []).append((member, payload))
        if not by_set:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for owned, members in by_set.items():
                args: list[str | int] = [self.token, self.ttl_ms]
                for member, payload in members:
                    args += [member, payload]
                await self._extend(keys=[*owned.keys, owned.alive], args=args, client=pipe)
            results = await pipe.execute()
        for (owned, members), flags in zip(by_set.items(), results, strict=False):
            for (member, _), ok in zip(members, flags, strict=False):
                if not ok and self._owned.pop((owned, member), None) is not None:
                    log.warning("lease %s was taken over by another holder", member)
                    if self.on_lost is not None:
                        self.on_lost(owned, member)

    def _ensure_heartbeat(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except Exception:  # noqa: BLE001 - a heartbeat must survive a Redis hiccup
                log.warning("lease heartbeat failed; retrying", exc_info=True)

    async def aclose(self) -> None:
        """Stop the heartbeat and release every lease and slot still held."""
        await self.slots.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for owned, member in list(self._owned):
            with contextlib.suppress(Exception):
                await self.release(owned, member)
