"""Dispatch overhead of the job system (beat → Redis queue → worker → MongoDB) vs plain asyncio.

Each trajectory makes 3 LLM calls, answered by a fake OpenAI-compatible server after
``--latency-s`` seconds (2 s). The job-system run starts one ``celery -A agentrl worker`` (threads
pool, ``max_concurrent_samples_per_process`` = the concurrency) and ``celery -A agentrl beat``,
which pushes the epoch; throughput is trajectories / (last Record written − epoch pushed). The
baseline makes the same calls with asyncio at the same concurrency. Also reported: the ceiling
with zero-latency calls, MongoDB commands per trajectory in the worker, and the time from
``push_epoch`` to the first sampler starting.

Usage: ``python bench/dispatch_overhead.py [--latency-s 2] [--waves 2]`` (needs Redis; starts the
embedded MongoDB-wire server when ``AGENTRL_DB_CONNECTION_STRING`` is unset).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentrl.configs import load_config  # noqa: E402
from agentrl.databases import Record, Task, init_databases  # noqa: E402
from bench.bench_sampler import CALLS_PER_TRAJECTORY, fake_llm_call  # noqa: E402

GENERATIONS = 4


def fake_server(port: int) -> None:
    """Serve ``POST /<latency_ms>/v1/chat/completions``, answering after latency_ms.

    A minimal HTTP/1.1 keep-alive server on asyncio streams (not a web framework), so the
    server's own CPU cost stays small next to what is measured.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(h.split(":", 1)[1]) for h in lines[1:]
                               if h.lower().startswith("content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(int(path.strip("/").split("/")[0]) / 1000)
                body = json.dumps({  # SGLang 0.5.23's reply to a request without logprobs/ids
                    "id": uuid.uuid4().hex, "object": "chat.completion",
                    "created": int(time.time()), "model": "fake",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok",
                                                         "reasoning_content": None},
                                 "logprobs": None, "finish_reason": "stop", "matched_stop": None}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 2, "completion_tokens": 1,
                              "prompt_tokens_details": None, "reasoning_tokens": 0,
                              "completion_tokens_details": None},
                    "metadata": {"weight_version": "0",
                                 "weight_versions": [{"version": "0", "start": 0, "end": 1}]},
                }).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def aware(value: datetime) -> datetime:
    """``value`` as timezone-aware UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 30) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            httpx.post(url, json={"messages": []}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def baseline(base_url: str, n: int, concurrency: int) -> float:
    """Trajectories/s of plain asyncio making the same calls at the same concurrency."""
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
            max_connections=2048, max_keepalive_connections=2048)) as client:

        async def one() -> None:
            async with slots:
                for turn in range(CALLS_PER_TRAJECTORY):
                    await fake_llm_call(client, base_url, turn)

        start = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.monotonic() - start)


def job_system(base_url: str, n: int, concurrency: int, workdir: Path) -> dict[str, float]:
    """Run ``n`` trajectories through beat/queue/worker/MongoDB; returns the measurements."""
    suffix = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "AGENTRL_KEY_PREFIX": f"bench{suffix}", "AGENTRL_DB_NAME": f"bench_{suffix}",
        "AGENTRL_SAMPLER": "bench", "AGENTRL_SAMPLER_MODULES": "bench.bench_sampler",
        "AGENTRL_NUM_GENERATIONS": str(GENERATIONS),
        "AGENTRL_MAX_TRAIN_TASKS": str(n // GENERATIONS),
        "AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS": str(concurrency),
        "AGENTRL_BEAT_INTERVAL_S": "0.5",
        "BENCH_BASE_URL": base_url, "BENCH_COUNT_MONGO": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
    })
    os.environ.update({k: v for k, v in env.items() if k.startswith("AGENTRL_")})
    config = load_config()
    dbs = init_databases(config)
    procs: list[subprocess.Popen] = []

    def celery(kind: str) -> subprocess.Popen:
        log = (workdir / f"{kind}-{suffix}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "agentrl", kind, "--loglevel", "WARNING"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        celery("worker")
        from agentrl.celery_app import make_app  # noqa: PLC0415 - after env is set

        app = make_app(config)
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not start")
        celery("beat")
        records = dbs.store.collection(Record)
        deadline = time.monotonic() + 600
        while records.count_documents({"status": {"$in": ["ready", "abandoned"]}}) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("trajectories did not finish")
            time.sleep(0.5)
        pushed = min(aware(t.created_at) for t in dbs.store.find(Task, {}))
        starts = sorted(aware(r.created_at) for r in dbs.store.find(Record, {}))
        ends = max(aware(r.updated_at) for r in dbs.store.find(Record, {}))
        ops = {k.decode(): int(v) for k, v in redis.Redis.from_url(config.redis_url).hgetall(
            f"{config.key_prefix}:bench:mongo_ops:worker").items()}
        return {
            "throughput": n / (ends - pushed).total_seconds(),
            "first_start_s": (starts[0] - pushed).total_seconds(),
            "mongo_ops_per_traj": sum(ops.values()) / n,
            "ops": ops,  # type: ignore[dict-item]
        }
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        dbs.store.client.drop_database(config.db_name)
        r = redis.Redis.from_url(config.redis_url)
        for key in r.scan_iter(f"{config.key_prefix}:*"):
            r.delete(key)
        dbs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--waves", type=int, default=2, help="trajectories = waves * concurrency")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[64, 256])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    if args.serve:
        fake_server(args.serve)
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                              start_new_session=True)
    workdir = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{port}/0/v1/chat/completions")
        for concurrency in args.concurrency:
            n = args.waves * concurrency
            url = f"http://127.0.0.1:{port}/{int(args.latency_s * 1000)}"
            direct = asyncio.run(baseline(url, n, concurrency))
            jobs = job_system(url, n, concurrency, workdir)
            rows.append((f"{args.latency_s:g} s", concurrency, n, direct, jobs))
        ceiling_c = max(args.concurrency)
        ceiling_url = f"http://127.0.0.1:{port}/0"
        direct = asyncio.run(baseline(ceiling_url, 2 * ceiling_c, ceiling_c))
        jobs = job_system(ceiling_url, 2 * ceiling_c, ceiling_c, workdir)
        rows.append(("0 s", ceiling_c, 2 * ceiling_c, direct, jobs))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    print()
    print(f"{'latency':>8} {'conc':>5} {'trajs':>6} {'asyncio traj/s':>15} "
          f"{'jobs traj/s':>12} {'ratio':>6} {'mongo ops/traj':>15} {'push→start s':>13}")
    for latency, conc, n, direct, jobs in rows:
        print(f"{latency:>8} {conc:>5} {n:>6} {direct:>15.2f} {jobs['throughput']:>12.2f} "
              f"{jobs['throughput'] / direct:>6.2f} {jobs['mongo_ops_per_traj']:>15.2f} "
              f"{jobs['first_start_s']:>13.2f}")
    print(f"\nmedian push_epoch → first sampler start: "
          f"{statistics.median(j['first_start_s'] for *_, j in rows):.2f} s")
    print("worker MongoDB commands (last run):", rows[-1][4]["ops"])


if __name__ == "__main__":
    main()
