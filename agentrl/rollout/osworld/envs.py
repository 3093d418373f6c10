"""The environment registry in MongoDB and atomic env leasing.

An :class:`Environment` is one agent sandbox (here an OSWorld VM reached through its control
server) registered under a unique ``name``. A trajectory *leases* one before it starts and returns
it when it ends:

- :func:`lease_env` picks a free env with one atomic ``find_one_and_update`` (free means
  ``in_use`` is False, or the lease expired: its holder died without releasing it), sets the
  owner and an expiry ``lease_ttl_s`` ahead;
- :class:`EnvLease` (``async with``) leases, renews the expiry every ``lease_ttl_s / 3`` seconds
  in a background task, and releases in ``finally`` on every exit path (success, exception,
  cancellation). A holder that lost its lease (expired and taken by someone else) gets
  :class:`~agentrl.errors.EnvLeaseLostError` from :meth:`EnvLease.check`;
- releasing only succeeds for the current owner, so a holder whose lease expired and was taken
  over cannot free an env someone else now uses.

Environments are registered (upserted by name) and unregistered by
:mod:`agentrl.rollout.osworld.provision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field
from pymongo import ReturnDocument

from agentrl.databases.documents import TYPE_FIELD, Document, register_new_model, utcnow
from agentrl.databases.store import AsyncMongoStore, MongoStore
from agentrl.errors import EnvLeaseLostError, NoEnvironmentAvailableError

logger = logging.getLogger(__name__)

ENV_INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("name", 1)], {"unique": True, "name": "env_name"}),
    ([(TYPE_FIELD, 1), ("status", 1), ("in_use", 1)], {"name": "env_free"}),
]
"""Indexes of the ``environments`` collection: unique name, and the lease query."""

LEASE_POLL_S = 0.5
"""Seconds between lease attempts while every env is taken."""


class EnvStatus(StrEnum):
    """Environment lifecycle: ``up`` (leasable) → ``down`` (unregistered or unreachable)."""

    UP = "up"
    DOWN = "down"


@register_new_model
class Environment(Document):
    """One agent environment in the registry, leased by one trajectory at a time.

    Attributes:
        name: unique name (e.g. ``osworld@10.0.0.5:5000``).
        status: ``up`` while registered and leasable.
        in_use: whether a lease is held (it may have expired: see ``lease_expires_at``).
        lease_owner: who holds the lease (``<record id>/<random>``), None when free.
        lease_expires_at_s: when the lease ends unless renewed (unix time, seconds), None when
            free. Unix seconds rather than a date: nx-27017 stores dates written with ``$set`` as
            strings, which then compare wrongly.
        leased_at_s: when the current lease started (unix time, seconds).
        lease_count: leases granted so far.
        node: host that registered it (its provisioner unregisters it on shutdown).
    """

    collection_name: ClassVar[str] = "environments"

    name: str = Field(description="Unique environment name.")
    status: EnvStatus = EnvStatus.UP
    in_use: bool = False
    lease_owner: str | None = None
    lease_expires_at_s: float | None = None
    leased_at_s: float | None = None
    lease_count: int = 0
    node: str = ""


@register_new_model
class OSWorldEnv(Environment):
    """An OSWorld VM reached through its env control server.

    Attributes:
        url: base URL of the control server (OSWorld's in-VM server API plus ``/evaluate``).
        host: VM address.
        port: control server port.
        os_type: ``Ubuntu`` or ``Windows``.
        screen_width: screen width in pixels.
        screen_height: screen height in pixels.
        provider: ``url`` (registered from config) or the desktop-env provider that started it.
        bridge_url: where agentrl's ``/reset`` and ``/evaluate`` are served when not at ``url``
            (the desktop-env bridge of the provisioning process).
    """

    url: str
    host: str = ""
    port: int = 0
    os_type: str = "Ubuntu"
    screen_width: int = 1920
    screen_height: int = 1080
    provider: str = "url"
    bridge_url: str = ""


def ensure_env_indexes(store: MongoStore) -> None:
    """Create :data:`ENV_INDEXES` (idempotent)."""
    coll = store.collection(Environment)
    for keys, options in ENV_INDEXES:
        coll.create_index(keys, **options)


def free_query(kind: type[Environment], now_s: float) -> dict[str, Any]:
    """The MongoDB filter of envs of ``kind`` that can be leased at unix time ``now_s``."""
    return {
        TYPE_FIELD: kind.__name__,
        "status": EnvStatus.UP.value,
        "$or": [{"in_use": False}, {"lease_expires_at_s": {"$lt": now_s}}],
    }


def _lease_update(owner: str, ttl_s: float, now_s: float) -> dict[str, Any]:
    return {
        "$set": {
            "in_use": True,
            "lease_owner": owner,
            "lease_expires_at_s": now_s + ttl_s,
            "leased_at_s": now_s,
            "updated_at": utcnow(),
        },
        "$inc": {"lease_count": 1},
    }


def _release_update() -> dict[str, Any]:
    return {
        "$set": {
            "in_use": False, "lease_owner": None, "lease_expires_at_s": None,
            "updated_at": utcnow(),
        }
    }


def try_lease_sync(
    store: MongoStore, kind: type[Environment], owner: str, ttl_s: float
) -> Environment | None:
    """One atomic lease attempt (synchronous). Returns the leased env or None when none is free."""
    now = time.time()
    raw = store.collection(Environment).find_one_and_update(
        free_query(kind, now), _lease_update(owner, ttl_s, now),
        sort=[("lease_count", 1)], return_document=ReturnDocument.AFTER,
    )
    return Environment.from_mongo(raw) if raw else None


async def try_lease(
    store: AsyncMongoStore, kind: type[Environment], owner: str, ttl_s: float
) -> Environment | None:
    """One atomic lease attempt. Returns the leased env or None when none is free.

    Args:
        store: async MongoDB access.
        kind: the environment class to lease (e.g. :class:`OSWorldEnv`).
        owner: lease owner id (unique per attempt).
        ttl_s: seconds until the lease expires unless renewed.
    """
    now = time.time()
    raw = await store.collection(Environment).find_one_and_update(
        free_query(kind, now), _lease_update(owner, ttl_s, now),
        sort=[("lease_count", 1)], return_document=ReturnDocument.AFTER,
    )
    return Environment.from_mongo(raw) if raw else None


async def lease_env(
    store: AsyncMongoStore,
    kind: type[Environment],
    owner: str,
    ttl_s: float,
    wait_s: float,
    poll_s: float = LEASE_POLL_S,
) -> Environment:
    """Lease a free env of ``kind``, waiting up to ``wait_s`` seconds for one.

    Raises:
        NoEnvironmentAvailableError: none became free in time (the message says whether any is
            registered at all).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        env = await try_lease(store, kind, owner, ttl_s)
        if env is not None:
            return env
        if loop.time() >= deadline:
            registered = await store.collection(Environment).count_documents(
                {TYPE_FIELD: kind.__name__, "status": EnvStatus.UP.value}
            )
            raise NoEnvironmentAvailableError(kind.__name__, wait_s, registered)
        await asyncio.sleep(poll_s)


async def renew_lease(store: AsyncMongoStore, env_id: str, owner: str, ttl_s: float) -> bool:
    """Push the lease's expiry ``ttl_s`` seconds ahead. Returns False when ``owner`` lost it."""
    result = await store.collection(Environment).update_one(
        {"_id": env_id, "lease_owner": owner, "in_use": True},
        {"$set": {"lease_expires_at_s": time.time() + ttl_s, "updated_at": utcnow()}},
    )
    return result.matched_count == 1


async def release_env(store: AsyncMongoStore, env_id: str, owner: str) -> bool:
    """Return the env to the pool. Returns False (and changes nothing) when ``owner`` no longer
    holds it."""
    result = await store.collection(Environment).update_one(
        {"_id": env_id, "lease_owner": owner}, _release_update()
    )
    return result.matched_count == 1


def release_env_sync(store: MongoStore, env_id: str, owner: str) -> bool:
    """Synchronous :func:`release_env`."""
    result = store.collection(Environment).update_one(
        {"_id": env_id, "lease_owner": owner}, _release_update()
    )
    return result.matched_count == 1


def new_owner(prefix: str) -> str:
    """A lease owner id unique to one attempt: ``<prefix>/<8 hex>``."""
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


class EnvLease:
    """``async with EnvLease(store, OSWorldEnv, owner_prefix, ttl_s, wait_s) as env:`` — lease an
    env, keep the lease alive, release it on every exit path.

    Args:
        store: async MongoDB access (of the running event loop).
        kind: environment class to lease.
        owner_prefix: identifies the holder, e.g. the Record id; a random suffix is added.
        ttl_s: lease lifetime without a heartbeat, in seconds.
        wait_s: seconds to wait for a free env.

    Attributes:
        env: the leased env (inside the block).
        owner: the lease owner id.
        lost: set when a heartbeat found the lease taken over.

    Raises:
        NoEnvironmentAvailableError: on entry, when nothing is free within ``wait_s``.
    """

    def __init__(
        self,
        store: AsyncMongoStore,
        kind: type[Environment],
        owner_prefix: str,
        ttl_s: float,
        wait_s: float,
    ) -> None:
        self.store, self.kind, self.ttl_s, self.wait_s = store, kind, ttl_s, wait_s
        self.owner = new_owner(owner_prefix)
        self.env: Environment | None = None
        self.lost = False
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Environment:
        self.env = await lease_env(self.store, self.kind, self.owner, self.ttl_s, self.wait_s)
        self._heartbeat = asyncio.create_task(self._beat(), name=f"env-lease-{self.env.name}")
        logger.info("leased env %s as %s", self.env.name, self.owner)
        return self.env

    async def _beat(self) -> None:
        if self.env is None:
            return
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if not await renew_lease(self.store, self.env.id, self.owner, self.ttl_s):
                    self.lost = True
                    logger.warning("lease on env %s lost by %s", self.env.name, self.owner)
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried next beat
                logger.exception("renewing lease on env %s failed", self.env.name)

    def check(self) -> None:
        """Raise :class:`EnvLeaseLostError` when the lease was lost (call between steps)."""
        if self.lost and self.env is not None:
            raise EnvLeaseLostError(self.env.name, self.owner)

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        if self.env is not None:
            # Shielded: a cancelled trajectory still returns its env.
            released = await asyncio.shield(release_env(self.store, self.env.id, self.owner))
            logger.info("released env %s (%s)", self.env.name, "ok" if released else "lost")
