"""DistributedLock and DistributedCounter against real Redis, across real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import redis

from agentrl.databases import DistributedCounter, DistributedLock


def _hold(url: str, prefix: str, ttl_s: float, results: mp.Queue, hold_s: float) -> None:
    lock = DistributedLock(redis.Redis.from_url(url), f"{prefix}:lock:contended", ttl_s=ttl_s)
    got = lock.acquire(blocking=False)
    results.put((os.getpid(), got))
    if got:
        time.sleep(hold_s)
        lock.release()


def _increment(url: str, prefix: str, times: int) -> None:
    counter = DistributedCounter(redis.Redis.from_url(url), f"{prefix}:counter:hits")
    for _ in range(times):
        counter.incr()


def test_two_processes_contend_exactly_one_holds(redis_url: str) -> None:
    prefix = f"locktest{os.getpid()}"
    results: mp.Queue = mp.get_context("spawn").Queue()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_hold, args=(redis_url, prefix, 30.0, results, 3.0)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(got for _, got in outcomes) == [False, True]


def test_killed_holder_loses_the_lock_after_expiry(redis_url: str) -> None:
    prefix = f"locktest{os.getpid()}k"
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    holder = ctx.Process(target=_hold, args=(redis_url, prefix, 2.0, results, 600.0))
    holder.start()
    assert results.get(timeout=60)[1] is True
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=10)
    mine = DistributedLock(redis.Redis.from_url(redis_url), f"{prefix}:lock:contended", ttl_s=5)
    assert mine.locked()  # the dead holder's lock is still there...
    assert not mine.acquire(blocking=False)
    assert mine.acquire(blocking=True, timeout_s=10)  # ...until its 2 s expiry passes
    assert mine.owned()
    mine.release()
    assert not mine.locked()


def test_concurrent_increments_from_processes_sum_exactly(redis_url: str) -> None:
    prefix = f"countertest{os.getpid()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(redis_url, prefix, 250)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    counter = DistributedCounter(redis.Redis.from_url(redis_url), f"{prefix}:counter:hits")
    assert counter.get() == 1000
    counter.set(7)
    assert counter.incr(3) == 10
