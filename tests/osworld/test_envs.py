"""The env registry: atomic leasing, expiry of a dead holder's lease, release on every exit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agentrl.databases import Databases
from agentrl.databases.store import AsyncMongoStore
from agentrl.errors import EnvLeaseLostError, NoEnvironmentAvailableError
from agentrl.rollout.osworld.envs import (
    Environment,
    EnvLease,
    OSWorldEnv,
    release_env,
    renew_lease,
    try_lease,
)
from agentrl.rollout.osworld.provision import register_env


def _register(dbs: Databases, count: int) -> list[OSWorldEnv]:
    return [
        register_env(dbs.store, OSWorldEnv(name=f"osworld@h{i}:5000", url=f"http://h{i}:5000"))
        for i in range(count)
    ]


def _run(dbs: Databases, body: Callable[[AsyncMongoStore], Coroutine[Any, Any, Any]]) -> Any:
    async def main() -> Any:
        store = AsyncMongoStore(dbs.mongo_uri, dbs.config.db_name)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _free(dbs: Databases) -> int:
    return dbs.store.collection(Environment).count_documents({"in_use": False})


def test_concurrent_leases_are_exclusive(dbs: Databases) -> None:
    envs = _register(dbs, 2)

    async def body(store: AsyncMongoStore) -> list[Environment | None]:
        return list(await asyncio.gather(*[
            try_lease(store, OSWorldEnv, f"owner{i}", ttl_s=30) for i in range(6)
        ]))

    leased = [env for env in _run(dbs, body) if env is not None]
    assert sorted(env.name for env in leased) == sorted(env.name for env in envs)
    assert all(isinstance(env, OSWorldEnv) and env.in_use for env in leased)
    assert len({env.lease_owner for env in leased}) == 2
    assert _free(dbs) == 0


def test_dead_holders_lease_expires_and_env_is_leased_again(dbs: Databases) -> None:
    _register(dbs, 1)

    async def body(store: AsyncMongoStore) -> tuple[Any, ...]:
        dead = await try_lease(store, OSWorldEnv, "dead", ttl_s=0.3)  # never renewed
        blocked = await try_lease(store, OSWorldEnv, "next", ttl_s=30)
        await asyncio.sleep(0.5)
        taken = await try_lease(store, OSWorldEnv, "next", ttl_s=30)
        late_renew = await renew_lease(store, dead.id, "dead", 30)
        late_release = await release_env(store, dead.id, "dead")
        return dead, blocked, taken, late_renew, late_release

    dead, blocked, taken, late_renew, late_release = _run(dbs, body)
    assert dead is not None and blocked is None
    assert taken is not None and taken.id == dead.id and taken.lease_owner == "next"
    assert taken.lease_count == 2
    # the dead holder can neither renew nor free an env someone else now holds
    assert late_renew is False and late_release is False
    assert _free(dbs) == 0


def test_heartbeat_keeps_the_lease_and_exit_releases(dbs: Databases) -> None:
    _register(dbs, 1)

    async def body(store: AsyncMongoStore) -> tuple[Any, ...]:
        async with EnvLease(store, OSWorldEnv, "rec", ttl_s=0.3, wait_s=1) as env:
            await asyncio.sleep(0.8)  # > ttl: only the heartbeat keeps it
            stolen = await try_lease(store, OSWorldEnv, "thief", ttl_s=30)
            held = await store.collection(Environment).find_one({"_id": env.id})
        return stolen, held

    stolen, held = _run(dbs, body)
    assert stolen is None
    # nx-27017 returns booleans written by $set as 1/0
    assert bool(held["in_use"]) and held["lease_owner"].startswith("rec/")
    assert _free(dbs) == 1


@pytest.mark.parametrize("ending", ["exception", "cancelled"])
def test_release_happens_on_every_exit_path(dbs: Databases, ending: str) -> None:
    _register(dbs, 1)

    async def body(store: AsyncMongoStore) -> str:
        async def trajectory() -> None:
            async with EnvLease(store, OSWorldEnv, "rec", ttl_s=30, wait_s=1):
                if ending == "exception":
                    raise ValueError("model crashed")
                await asyncio.sleep(30)

        job = asyncio.create_task(trajectory())
        await asyncio.sleep(0.3)
        if ending == "cancelled":
            job.cancel()
        try:
            await job
        except (ValueError, asyncio.CancelledError) as exc:
            return type(exc).__name__
        return "none"

    assert _run(dbs, body) == ("ValueError" if ending == "exception" else "CancelledError")
    assert _free(dbs) == 1
    raw = dbs.store.collection(Environment).find_one({})
    assert raw["lease_owner"] is None and raw["lease_expires_at_s"] is None


def test_waiting_for_a_free_env_and_lost_lease(dbs: Databases) -> None:
    async def nothing(store: AsyncMongoStore) -> None:
        async with EnvLease(store, OSWorldEnv, "rec", ttl_s=30, wait_s=0.3):
            pass

    with pytest.raises(NoEnvironmentAvailableError, match="0 registered"):
        _run(dbs, nothing)
    _register(dbs, 1)

    async def lost_wrapper(store: AsyncMongoStore) -> None:
        lease = EnvLease(store, OSWorldEnv, "rec", ttl_s=0.3, wait_s=1)
        async with lease as env:
            await store.collection(Environment).update_one(
                {"_id": env.id}, {"$set": {"lease_owner": "other"}})
            await asyncio.sleep(0.3)
            lease.check()

    with pytest.raises(EnvLeaseLostError, match="osworld@h0:5000"):
        _run(dbs, lost_wrapper)
    # the lease holder that lost it does not free the env of the new owner
    assert dbs.store.collection(Environment).find_one({})["lease_owner"] == "other"
