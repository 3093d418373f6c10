"""Helpers of the routing tests: a Router over real connections, and an attempt as the router
sees it (calls written straight to MongoDB)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import AsyncMongoStore, Databases, DispatchedSamplingTask, Record
from agentrl.inference.routing import Router
from agentrl.rollout.leases import LeaseKeeper


async def with_router(config: AgentTrainingConfig, dbs: Databases, fn: Any) -> Any:
    store = AsyncMongoStore(dbs.mongo_uri, config.db_name)
    client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        config.redis_url, decode_responses=True, max_connections=32))
    leases = LeaseKeeper(client, config.lease_ttl_s, config.heartbeat_interval_s)
    router = Router(config, store, client, leases)
    try:
        return await fn(router)
    finally:
        await router.aclose()
        await leases.aclose()
        await client.aclose()
        await store.close()


class Recorder:
    """A trajectory attempt as the router sees it, logging calls straight to MongoDB."""

    def __init__(self, dbs: Databases, record: Record, number: int = 1) -> None:
        self.dbs, self.record, self.number, self.turns = dbs, record, number, 0

    @property
    def record_id(self) -> str:
        return self.record.id

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def check_lease(self) -> None:
        return None

    def next_turn(self) -> int:
        self.turns += 1
        return self.turns - 1

    def log_call(self, call: DispatchedSamplingTask) -> None:
        call.attempt = self.number
        data = call.to_mongo()
        self.dbs.store.collection(DispatchedSamplingTask).replace_one(
            {"_id": data["_id"]}, data, upsert=True)
