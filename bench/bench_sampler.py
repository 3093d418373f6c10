"""The dispatch benchmark's sampler (registered as ``bench``): 3 LLM calls to a fake
OpenAI-compatible server, no model. Workers import it through ``sampler_modules``.

It also counts every MongoDB command this process sends (pymongo command monitoring) into the
Redis hash ``<key_prefix>:bench:mongo_ops:<role>``, so the benchmark can report MongoDB
operations per trajectory.
"""

from __future__ import annotations

import os
import sys
import threading

import httpx
import redis
from pymongo import monitoring

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import Record, Task
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler

CALLS_PER_TRAJECTORY = 3
_clients: dict[int, httpx.AsyncClient] = {}


def http_client() -> httpx.AsyncClient:
    """One pooled HTTP client per event loop thread."""
    key = threading.get_ident()
    if key not in _clients:
        _clients[key] = httpx.AsyncClient(
            timeout=60.0, limits=httpx.Limits(max_connections=2048, max_keepalive_connections=2048)
        )
    return _clients[key]


async def fake_llm_call(client: httpx.AsyncClient, base_url: str, turn: int) -> dict:
    """One chat completion against the fake server (transport errors retried, like the
    router does)."""
    for attempt in range(3):
        try:
            response = await client.post(
                f"{base_url}/v1/chat/completions",
                json={"model": "fake", "messages": [{"role": "user", "content": f"turn {turn}"}]},
            )
            response.raise_for_status()
            return response.json()
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@register_sampler("bench")
class BenchSampler(AsyncSampler):
    """Three sequential fake LLM calls; score ``traj_id % 2``."""

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> list[Task]:
        """``max_train_tasks`` empty tasks."""
        return [Task() for _ in range(config.max_train_tasks or 1)]

    async def run(self) -> None:
        base_url = os.environ["BENCH_BASE_URL"]
        client = http_client()
        for turn in range(CALLS_PER_TRAJECTORY):
            await fake_llm_call(client, base_url, turn)

    async def evaluate_record(self, record: Record) -> float:
        return float(record.traj_id % 2)


class _CountingListener(monitoring.CommandListener):
    """Counts MongoDB commands by name into Redis (for the benchmark's report)."""

    def __init__(self) -> None:
        config = load_config()
        role = "beat" if "beat" in sys.argv else "worker"
        self.key = f"{config.key_prefix}:bench:mongo_ops:{role}"
        self.redis = redis.Redis.from_url(config.redis_url)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("ping", "hello", "isMaster", "ismaster", "endSessions",
                                      "buildInfo", "getMore", "killCursors", "createIndexes"):
            self.redis.hincrby(self.key, event.command_name, 1)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


if os.environ.get("BENCH_COUNT_MONGO"):
    monitoring.register(_CountingListener())
