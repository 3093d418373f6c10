"""Request slots counted per process (real Redis): two processes' boards see each other's
requests, a per-request member counts as one, and a process that stops renewing stops counting."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases
from agentrl.rollout.ledger import RedisKeys
from agentrl.rollout.slots import SlotBoard, slot_loads


def test_boards_share_loads_and_a_silent_process_stops_counting(
    config: AgentTrainingConfig, dbs: Databases
) -> None:
    keys = RedisKeys(config.key_prefix)
    a_key, b_key = keys.service_slots("a"), keys.service_slots("b")
    dbs.redis.zadd(b_key, {"request-of-another-writer": (time.time() + 60) * 1000})

    async def scenario() -> tuple[list[int], list[int], list[int], list[int], list[int]]:
        client = aioredis.Redis.from_url(config.redis_url, decode_responses=True)
        first = SlotBoard(client, "first", ttl_s=1.0)
        second = SlotBoard(client, "second", ttl_s=60.0)
        try:
            taken = [await first.take([a_key, b_key]) for _ in range(3)]
            await first.refresh()
            seen = await second.loads([a_key, b_key])
            chosen = [(await second.take([a_key, b_key]))[0] for _ in range(2)]
            await second.refresh()
            stored = slot_loads(dbs.redis, [a_key, b_key])
            first.drop(taken[0][1])
            await first.refresh()
            after_drop = slot_loads(dbs.redis, [a_key, b_key])
            if first._task is not None:  # the first process goes silent (killed)
                first._task.cancel()
            await asyncio.sleep(1.2)
            await second.refresh()
            lapsed = slot_loads(dbs.redis, [a_key, b_key])
            return [i for i, _ in taken], seen, chosen + stored, after_drop, lapsed
        finally:
            await second.aclose()
            await client.aclose()

    taken, seen, chosen_and_stored, after_drop, lapsed = asyncio.run(scenario())
    assert taken == [0, 0, 1]  # least loaded: a, a (b has one request already), then b
    assert seen == [2, 2]  # the first process's 2 + 1 on b, and b's per-request member
    assert chosen_and_stored == [0, 1, 3, 3]  # second: a (tie, first), then b; Redis a 2+1, b 2+1
    assert after_drop == [2, 3]
    assert lapsed == [1, 2]  # the silent process's member expired: second's and the other's
