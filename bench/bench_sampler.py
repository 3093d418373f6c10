"""The dispatch benchmark's sampler (registered as ``bench``) and its in-process counters.

:class:`BenchSampler` makes ``BENCH_CALLS`` (3) chat calls through the router, as every sampler
does (``self.create_chat_completions``: a slot lease per call, each call logged as a
DispatchedSamplingTask of its attempt), to the inference services registered for the model.
Workers import it through ``sampler_modules``.

With ``BENCH_STATS_DIR`` set, each process that imports it (workers and beat) counts every
MongoDB command it sends (pymongo command monitoring, by command name), every Redis command it
sends (redis-py's command packers, by name: a script call is one command, a pipeline of ten is
ten) and its Redis round trips (packed sends), and the trajectories running in its ``run`` (now,
peak, done); it writes them to ``<dir>/<role>-<pid>.json`` every :data:`FLUSH_S` seconds and at
exit. The counters cost no database round trip of their own.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import threading
from pathlib import Path

import redis.asyncio.connection as async_connection
import redis.connection as sync_connection
from pymongo import monitoring

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Record, Task
from agentrl.rollout.registry import register_sampler
from agentrl.rollout.sampler import AsyncSampler

CALLS_PER_TRAJECTORY = int(os.environ.get("BENCH_CALLS", "3"))
FLUSH_S = 0.2
"""Seconds between two writes of a process's counters."""
NOT_COUNTED = frozenset(
    {
        "ping",
        "hello",
        "isMaster",
        "ismaster",
        "endSessions",
        "buildInfo",
        "saslStart",
        "saslContinue",
    }
)
"""Connection handshakes and monitoring: not operations of the job system."""


class Counters:
    """What one process did: MongoDB commands by name, trajectories running (now, peak, done)."""

    def __init__(self) -> None:
        self.mongo: collections.Counter[str] = collections.Counter()
        self.redis: collections.Counter[str] = collections.Counter()
        self.redis_round_trips = 0
        self.running = self.peak = self.done = 0
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, object]:
        """The counters as JSON-able values."""
        with self.lock:
            return {
                "mongo": dict(self.mongo),
                "redis": dict(self.redis),
                "redis_round_trips": self.redis_round_trips,
                "running": self.running,
                "peak": self.peak,
                "done": self.done,
                "pid": os.getpid(),
            }


COUNTERS = Counters()


class _MongoCounter(monitoring.CommandListener):
    """Counts the MongoDB commands this process sends, by name."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in NOT_COUNTED:
            with COUNTERS.lock:
                COUNTERS.mongo[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _count_redis(args: tuple) -> None:
    name = args[0] if args else b"?"
    name = name.decode() if isinstance(name, bytes) else str(name)
    with COUNTERS.lock:
        COUNTERS.redis[name.split(" ")[0].upper()] += 1


def _count_redis_commands() -> None:
    """Wrap redis-py's command packers and senders (sync: kombu, beat; asyncio: the worker)."""
    for packer in (sync_connection.PythonRespSerializer, sync_connection.HiredisRespSerializer):
        pack = packer.pack

        def counted_pack(self: object, *args: object, _pack=pack) -> object:
            _count_redis(args)
            return _pack(self, *args)

        packer.pack = counted_pack  # type: ignore[method-assign]
    async_pack = async_connection.AbstractConnection.pack_command

    def counted_async_pack(self: object, *args: object) -> object:
        _count_redis(args)
        return async_pack(self, *args)

    async_connection.AbstractConnection.pack_command = counted_async_pack  # type: ignore
    sync_send = sync_connection.AbstractConnection.send_packed_command

    def counted_send(self: object, *args: object, **kwargs: object) -> object:
        with COUNTERS.lock:
            COUNTERS.redis_round_trips += 1
        return sync_send(self, *args, **kwargs)

    sync_connection.AbstractConnection.send_packed_command = counted_send  # type: ignore
    async_send = async_connection.AbstractConnection.send_packed_command

    async def counted_async_send(self: object, *args: object, **kwargs: object) -> object:
        with COUNTERS.lock:
            COUNTERS.redis_round_trips += 1
        return await async_send(self, *args, **kwargs)

    async_connection.AbstractConnection.send_packed_command = counted_async_send  # type: ignore


def _start_flushing(directory: Path) -> None:
    role = "beat" if "beat" in sys.argv else "worker"
    path = directory / f"{role}-{os.getpid()}.json"
    stop = threading.Event()

    def write() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(COUNTERS.snapshot()))
        tmp.replace(path)

    def loop() -> None:
        while not stop.wait(FLUSH_S):
            write()

    threading.Thread(target=loop, name="bench-counters", daemon=True).start()
    atexit.register(write)


@register_sampler("bench")
class BenchSampler(AsyncSampler):
    """:data:`CALLS_PER_TRAJECTORY` sequential chat calls through the router; score
    ``traj_id % 2``."""

    @classmethod
    def load_dataset(cls, config: AgentTrainingConfig, split: str) -> list[Task]:
        """``max_train_tasks`` empty tasks."""
        return [Task() for _ in range(config.max_train_tasks or 1)]

    async def run(self) -> None:
        with COUNTERS.lock:
            COUNTERS.running += 1
            COUNTERS.peak = max(COUNTERS.peak, COUNTERS.running)
        try:
            messages = [{"role": "user", "content": "1 + 1 ="}]
            for _ in range(CALLS_PER_TRAJECTORY):
                reply = await self.create_chat_completions(messages, max_tokens=4)
                messages = [
                    *messages,
                    reply["choices"][0]["message"],
                    {"role": "user", "content": "and again?"},
                ]
        finally:
            with COUNTERS.lock:
                COUNTERS.running -= 1
                COUNTERS.done += 1

    async def evaluate_record(self, record: Record) -> float:
        return float(record.traj_id % 2)


if os.environ.get("BENCH_STATS_DIR"):
    monitoring.register(_MongoCounter())
    _count_redis_commands()
    _start_flushing(Path(os.environ["BENCH_STATS_DIR"]))
