"""Dispatch throughput of the job system against the ideal, the zero-latency ceiling and upstream.

Workload: trajectories of ``--calls`` (3) chat calls, each answered after ``--latency-s`` (2 s)
by the SGLang stub (``tests/inference/stub_server.py``, in its own process, registered as an
``sglang`` service). The calls go the way samplers' calls go: the router (a slot lease per call,
the circuit breaker) and the call log (each call a DispatchedSamplingTask of its attempt).

Each row starts its own ``celery -A agentrl worker`` process(es) (``--workers``) with
``max_concurrent_samples_per_process`` = the concurrency, then ``celery -A agentrl beat``, which
pushes one epoch of ``waves × concurrency × workers`` trajectories (groups of 4). Measured:

- ``traj_per_s``: trajectories / (last Record finished − epoch pushed);
- ``ideal_traj_per_s``: ``workers × concurrency / (calls × latency_s)``, and their ratio;
- ``peak_in_flight``: most trajectories inside ``run`` at once (counted in the worker);
- ``mongo_ops_per_traj``: MongoDB commands of the workers and beat (pymongo command monitoring,
  handshakes excluded) per trajectory; ``redis_cmds_per_traj``: the Redis commands the workers
  and beat sent (counted in redis-py: a script call is one command, a pipeline of ten is ten;
  Celery's broker traffic and events included), ``redis_round_trips_per_traj``, and
  ``redis_server_cmds_per_traj``: every command the bench's own ``redis-server`` executed during
  the row, those inside scripts included (``INFO commandstats`` delta);
- ``push_to_first_start_s``: epoch pushed → first sampler started; ``fill_s``: epoch pushed →
  the process(es) first full (the ``workers × concurrency``-th sampler started);
- ``steady_traj_per_s`` and ``steady_fraction_of_ideal``: the rate once the process is full —
  trajectories started after it was first full ÷ (last start − that moment). A freed slot that is
  refilled at once gives ``concurrency / trajectory latency`` (the ideal, when trajectories are
  not stretched); each slot's refill delay lowers it. ``traj_per_s`` also pays the fill and the
  last wave's drain once per epoch, so with few ``--waves`` it is the lower of the two;
- ``worker_cpu_ms_per_traj``, ``worker_rss_mb`` (peak) and the CPU share of each process kind
  (worker, beat, stub, redis, mongo) — on a shared machine, which part runs out first;
- ``worker_cores_at_ideal``: the cores one worker process would need to run its share of the
  ideal rate at the CPU per trajectory it measured (ideal ÷ workers × CPU per trajectory). One
  Python process runs on one core at most (the GIL), so a row whose value nears 1 cannot reach
  its ideal on that machine, however the dispatch is arranged.

The zero-latency row (``--ceiling``) is what one worker process turns over when the inference
service answers at once. ``--upstream SRC`` also runs ``../shared/peer/upstream_dispatch.py``
(upstream AgentRL's scheduler, with ``--upstream-python``) on the same workload and prints
agentrl ÷ upstream at each concurrency both ran.

Usage::

    python bench/dispatch_overhead.py [--concurrency 64 256 512 1024] [--workers 1 2]
        [--latency-s 2] [--waves 2] [--ceiling 256] [--upstream SRC] [--json]

Needs ``redis-server`` on PATH (one is started per bench run, on a free port) and starts the
embedded MongoDB-wire server in a temporary directory unless ``AGENTRL_DB_CONNECTION_STRING``
is set.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentrl.configs import AgentTrainingConfig, load_config  # noqa: E402
from agentrl.databases import Databases, Record, Task, init_databases  # noqa: E402
from agentrl.inference.services import register_service  # noqa: E402

GENERATIONS = 4
SAMPLE_S = 0.2
"""Seconds between two samples of the processes' CPU and memory."""
UPSTREAM = REPO.parent / "shared" / "peer" / "upstream_dispatch.py"
UPSTREAM_MAX_S = 90.0
"""Seconds upstream runs at most per concurrency (its rate is measured over that window)."""


@dataclass
class Row:
    """One measured configuration (the fields ``--json`` prints)."""

    system: str
    workers: int
    concurrency: int
    latency_s: float
    trajectories: int
    traj_per_s: float
    ideal_traj_per_s: float | None
    fraction_of_ideal: float | None
    peak_in_flight: int
    mongo_ops_per_traj: float | None
    redis_cmds_per_traj: float | None
    redis_round_trips_per_traj: float | None = None
    redis_server_cmds_per_traj: float | None = None
    push_to_first_start_s: float | None = None
    fill_s: float | None = None
    steady_traj_per_s: float | None = None
    steady_fraction_of_ideal: float | None = None
    traj_latency_s: float | None = None
    traj_latency_p90_s: float | None = None
    worker_cpu_ms_per_traj: float | None = None
    worker_cores_at_ideal: float | None = None
    worker_rss_mb: float | None = None
    cpu_share: dict[str, float] = field(default_factory=dict)
    mongo_ops: dict[str, int] = field(default_factory=dict)
    redis_top: dict[str, int] = field(default_factory=dict)
    vs_upstream: float | None = None


def aware(value: datetime | str) -> datetime:
    """``value`` as timezone-aware UTC (nx-27017 gives back ``$set`` dates as strings)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A redis-server of the bench's own (its command counts are the bench's alone)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "10000",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's redis-server did not start") from None
            time.sleep(0.1)
    try:
        yield url, proc.pid
    finally:
        stop(proc)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def stub_server(delay_s: float, workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The SGLang stub in its own process; yields ``(base_url, process)``."""
    log = (workdir / f"stub-{delay_s:g}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.inference.stub_server", "--delay-s", str(delay_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        port = int((proc.stdout.readline() if proc.stdout else "") or 0)
        if not port:
            raise RuntimeError(f"the stub server did not start (see {log.name})")
        yield f"http://127.0.0.1:{port}/llm", proc
    finally:
        stop(proc)


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Calls per command of the Redis server so far (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


class Sampler:
    """Samples CPU seconds and peak RSS of named processes."""

    def __init__(self, procs: dict[str, list[int]]) -> None:
        self.procs = {kind: [psutil.Process(p) for p in pids] for kind, pids in procs.items()}
        self.start = self._cpu()
        self.rss_mb = 0.0

    def _cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, procs in self.procs.items():
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            out[kind] = total
        return out

    def sample(self) -> None:
        """Record the workers' resident memory now."""
        rss = 0
        for proc in self.procs.get("worker", []):
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
        self.rss_mb = max(self.rss_mb, rss / 2**20)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds of each kind since the sampler was made."""
        now = self._cpu()
        return {kind: now[kind] - self.start.get(kind, 0.0) for kind in now}


def read_counters(directory: Path) -> dict[str, dict]:
    """The counters every process of the row wrote (bench/bench_sampler.py), by file name."""
    out = {}
    for path in directory.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            out[path.name] = {"role": path.name.split("-")[0], **json.loads(path.read_text())}
    return out


def counter_totals(after: dict[str, dict], before: dict[str, dict]) -> dict[str, Any]:
    """What the processes counted between two :func:`read_counters` readings, summed."""
    mongo: collections.Counter[str] = collections.Counter()
    redis_cmds: collections.Counter[str] = collections.Counter()
    trips = peak = 0
    for name, now in after.items():
        then = before.get(name, {})
        mongo.update({k: v - then.get("mongo", {}).get(k, 0) for k, v in now["mongo"].items()})
        redis_cmds.update({k: v - then.get("redis", {}).get(k, 0) for k, v in now["redis"].items()})
        trips += now["redis_round_trips"] - then.get("redis_round_trips", 0)
        if now["role"] == "worker":
            peak += int(now["peak"])
    return {"mongo": +mongo, "redis": +redis_cmds, "round_trips": trips, "peak": peak}


def mongo_pid(uri: str, mongo_dir: Path) -> int | None:
    """The pid of the embedded MongoDB-wire server (``None`` for a configured server)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((mongo_dir / "server.json").read_text())["pid"])
    return None


def stop_embedded_mongo(mongo_dir: Path) -> None:
    """Stop the embedded MongoDB-wire server the bench started in ``mongo_dir``."""
    pid = mongo_pid("", mongo_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def row_settings(
    args: argparse.Namespace, redis_url: str, workers: int, concurrency: int, n: int,
    suffix: str, stats_dir: Path,
) -> tuple[dict[str, str], AgentTrainingConfig]:
    """The environment of a row's worker and beat processes (their own key prefix and
    database, the bench sampler) and the configuration it gives in this process."""
    env = dict(os.environ)
    env.update(
        {
            "AGENTRL_KEY_PREFIX": f"bench{suffix}",
            "AGENTRL_DB_NAME": f"bench_{suffix}",
            "AGENTRL_REDIS_URL": redis_url,
            "AGENTRL_SAMPLER": "bench",
            "AGENTRL_SAMPLER_MODULES": "bench.bench_sampler",
            "AGENTRL_NUM_GENERATIONS": str(GENERATIONS),
            "AGENTRL_MAX_TRAIN_TASKS": str(n // GENERATIONS),
            "AGENTRL_MAX_CONCURRENT_SAMPLES_PER_PROCESS": str(concurrency),
            "AGENTRL_TARGET_CONCURRENCY": str(10 * concurrency * workers),
            "AGENTRL_REQUEST_TIMEOUT_S": "120",
            "BENCH_CALLS": str(args.calls),
            "BENCH_STATS_DIR": str(stats_dir),
            "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        }
    )
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AGENTRL_")})
    config = load_config()
    os.environ.clear()
    os.environ.update(saved)
    return env, config


def start_celery(kind: str, extra: Sequence[str], env: dict[str, str],
                 log_path: Path) -> subprocess.Popen:
    """``celery -A agentrl <kind> <extra>`` in its own session, logging to ``log_path``."""
    log = log_path.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentrl", kind, "--loglevel", "WARNING", *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_for_epoch(sampler: Sampler, records: Any, n: int, timeout_s: float,
                   workdir: Path, stats_dir: Path) -> None:
    """Sample the processes every :data:`SAMPLE_S` until ``n`` records are READY or
    ABANDONED.

    MongoDB is asked only once the workers' own counters have ``n`` trajectories done: a count
    over the Records is a scan that nx-27017 runs while it holds the database, which would
    slow the run it measures.

    Raises:
        RuntimeError: not within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_check = 0.0
    while True:
        sampler.sample()
        if time.monotonic() - last_check >= 1.0:
            last_check = time.monotonic()
            done = sum(int(c["done"]) for c in read_counters(stats_dir).values()
                       if c["role"] == "worker")
            if done >= n and records.count_documents(
                    {"status": {"$in": ["ready", "abandoned"]}}) >= n:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} trajectories did not finish (logs in {workdir})")
        time.sleep(SAMPLE_S)


def process_sampler(procs: list[subprocess.Popen], stub_pid: int, redis_pid: int,
                    dbs: Databases, config: AgentTrainingConfig) -> Sampler:
    """A CPU and memory sampler of the row's workers, the stub, Redis and (when it is ours)
    the MongoDB-wire server."""
    mongo = mongo_pid(dbs.mongo_uri, config.embedded_db_dir)
    return Sampler({
        "worker": [p.pid for p in procs], "stub": [stub_pid], "redis": [redis_pid],
        **({"mongo": [mongo]} if mongo else {}),
    })


@dataclass
class Timings:
    """A row's Records on one clock: seconds after the epoch was pushed."""

    starts: list[float]
    """Every trajectory's start, sorted."""
    end: float
    """The last trajectory finished."""
    spans: list[float]
    """Every trajectory's duration (started → finished), sorted."""

    def steady_rate(self, full: int) -> tuple[float | None, float | None]:
        """When the ``full``-th trajectory started (the process first full, if its peak in
        flight reached ``full``), and the rate of the starts after it, in trajectories/s
        (``None`` when no trajectory started after it)."""
        if len(self.starts) < full:
            return None, None
        at = self.starts[full - 1]
        later = len(self.starts) - full
        window = self.starts[-1] - at
        return at, (later / window if later and window > 0 else None)


def record_timings(dbs: Databases) -> Timings:
    """The starts, end and durations of the row's Records (seconds after the epoch push)."""
    pushed = min(aware(t.created_at) for t in dbs.store.find(Task, {}))
    raw = list(dbs.store.collection(Record).find({}, {"started_at": 1, "finished_at": 1}))

    def since(value: datetime | str) -> float:
        return (aware(value) - pushed).total_seconds()

    return Timings(
        starts=sorted(since(r["started_at"]) for r in raw if r.get("started_at")),
        end=max(since(r["finished_at"]) for r in raw if r.get("finished_at")),
        spans=sorted(since(r["finished_at"]) - since(r["started_at"])
                     for r in raw if r.get("finished_at") and r.get("started_at")),
    )


def clean_up_row(procs: list[subprocess.Popen], dbs: Databases, config: AgentTrainingConfig,
                 client: redis.Redis, keep_db: bool) -> None:
    """Stop the row's processes, drop its database (unless ``keep_db``) and its Redis keys."""
    for proc in procs:
        stop(proc)
    if not keep_db:
        with contextlib.suppress(Exception):
            dbs.store.client.drop_database(config.db_name)
    for key in client.scan_iter(f"{config.key_prefix}:*"):
        client.delete(key)
    dbs.close()


def wait_for_workers(config: AgentTrainingConfig, workers: int, workdir: Path,
                     timeout_s: float = 120) -> None:
    """Wait until ``workers`` Celery workers of the row answer a ping.

    Raises:
        RuntimeError: not within ``timeout_s`` seconds.
    """
    from agentrl.celery_app import make_app  # noqa: PLC0415 - after the settings are made

    app = make_app(config)
    deadline = time.monotonic() + timeout_s
    while len(app.control.ping(timeout=1.0) or []) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start (logs in {workdir})")


def run_row(
    args: argparse.Namespace,
    base_url: str,
    stub_pid: int,
    redis_at: tuple[str, int],
    workers: int,
    concurrency: int,
    latency_s: float,
    workdir: Path,
) -> Row:
    """Run one epoch through beat → queue → worker(s) → MongoDB and measure it."""
    redis_url, redis_pid = redis_at
    n = args.waves * concurrency * workers // GENERATIONS * GENERATIONS  # whole groups
    suffix = uuid.uuid4().hex[:8]
    (stats_dir := workdir / f"stats-{suffix}").mkdir()
    env, config = row_settings(args, redis_url, workers, concurrency, n, suffix, stats_dir)
    dbs = init_databases(config)
    register_service(dbs.store, base_url, config.model_name, kind="sglang")
    procs: list[subprocess.Popen] = []

    def celery(kind: str, *extra: str) -> subprocess.Popen:
        log_path = workdir / f"{kind}-{suffix}-{len(procs)}.log"
        procs.append(start_celery(kind, extra, env, log_path))
        return procs[-1]

    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(workers):
            celery("worker", "-Q", "sampling", "-n", f"bench{i}-{suffix}@%h")
        wait_for_workers(config, workers, workdir)
        sampler = process_sampler(procs, stub_pid, redis_pid, dbs, config)
        time.sleep(3 * SAMPLE_S)  # the workers' counters after their start
        counted_before = read_counters(stats_dir)
        before = command_counts(client)
        beat = celery("beat")
        sampler.procs["beat"] = [psutil.Process(beat.pid)]
        sampler.start["beat"] = 0.0
        started = time.monotonic()
        wait_for_epoch(sampler, dbs.store.collection(Record), n, args.row_timeout_s, workdir,
                       stats_dir)
        cpu = sampler.cpu_s()
        wall_s = time.monotonic() - started
        after = command_counts(client)
        time.sleep(2 * SAMPLE_S)
        counted = counter_totals(read_counters(stats_dir), counted_before)
        timings = record_timings(dbs)
    finally:
        clean_up_row(procs, dbs, config, client, keep_db=args.keep_db)
    redis_delta = {k: v - before.get(k, 0) for k, v in after.items() if k != "info"}
    ideal = workers * concurrency / (args.calls * latency_s) if latency_s > 0 else None
    return agentrl_row(workers, concurrency, latency_s, n, ideal, counted, redis_delta,
                       timings, cpu, wall_s, sampler.rss_mb)


def agentrl_row(
    workers: int,
    concurrency: int,
    latency_s: float,
    n: int,
    ideal: float | None,
    counted: dict[str, Any],
    redis_delta: dict[str, int],
    timings: Timings,
    cpu: dict[str, float],
    wall_s: float,
    rss_mb: float,
) -> Row:
    """The row of ``n`` trajectories (``ideal`` traj/s) from what its processes counted
    (:func:`counter_totals`), the Redis server's command deltas, the Records' timings and the
    processes' CPU seconds over ``wall_s`` seconds."""
    mongo, redis_cmds = counted["mongo"], counted["redis"]
    throughput = n / timings.end
    fill_s, steady = timings.steady_rate(workers * concurrency)
    spans = timings.spans
    return Row(
        system="agentrl",
        workers=workers,
        concurrency=concurrency,
        latency_s=latency_s,
        trajectories=n,
        traj_per_s=throughput,
        ideal_traj_per_s=ideal,
        fraction_of_ideal=throughput / ideal if ideal else None,
        peak_in_flight=counted["peak"],
        mongo_ops_per_traj=sum(mongo.values()) / n,
        redis_cmds_per_traj=sum(redis_cmds.values()) / n,
        redis_round_trips_per_traj=counted["round_trips"] / n,
        redis_server_cmds_per_traj=sum(v for v in redis_delta.values() if v > 0) / n,
        push_to_first_start_s=timings.starts[0],
        fill_s=fill_s,
        steady_traj_per_s=steady,
        steady_fraction_of_ideal=steady / ideal if steady and ideal else None,
        traj_latency_s=sum(spans) / len(spans),
        traj_latency_p90_s=spans[int(0.9 * len(spans))],
        worker_cpu_ms_per_traj=1000 * cpu["worker"] / n,
        worker_cores_at_ideal=ideal / workers * cpu["worker"] / n if ideal else None,
        worker_rss_mb=rss_mb,
        cpu_share={kind: seconds / wall_s for kind, seconds in cpu.items()},
        mongo_ops=dict(sorted(mongo.items(), key=lambda kv: -kv[1])),
        redis_top=dict(redis_cmds.most_common(10)),
    )


def run_upstream(args: argparse.Namespace, concurrency: int, latency_s: float) -> Row | None:
    """Upstream AgentRL's scheduler on the same workload (``None`` when it printed no result)."""
    tasks = max(1, args.waves * concurrency // GENERATIONS)
    env = {**os.environ, "UPSTREAM_SRC": args.upstream, "MAX_S": str(args.upstream_max_s)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            args.upstream_python,
            str(UPSTREAM),
            str(tasks),
            str(GENERATIONS),
            str(concurrency),
            str(latency_s),
            str(args.calls),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=args.upstream_max_s + 120,
    )
    match = re.search(r"RESULT after ([\d.]+) s: done=(\d+) peak=(\d+)", result.stdout)
    if match is None:
        match = re.search(
            r"upstream: (\d+) trajectories in ([\d.]+) s.*peak concurrent (\d+)", result.stdout
        )
        if match is None:
            print(
                f"upstream printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}",
                file=sys.stderr,
            )
            return None
        done, wall_s, peak = int(match[1]), float(match[2]), int(match[3])
    else:
        wall_s, done, peak = float(match[1]), int(match[2]), int(match[3])
    ideal = concurrency / (args.calls * latency_s)
    rate = done / wall_s
    return Row(
        system="upstream",
        workers=1,
        concurrency=concurrency,
        latency_s=latency_s,
        trajectories=done,
        traj_per_s=rate,
        ideal_traj_per_s=ideal,
        fraction_of_ideal=rate / ideal,
        peak_in_flight=peak,
        mongo_ops_per_traj=None,
        redis_cmds_per_traj=None,
    )


def print_table(rows: list[Row]) -> None:
    """The rows as a table."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(
        f"\n{'system':>8} {'procs':>5} {'conc':>5} {'lat s':>5} {'trajs':>6} {'traj/s':>8} "
        f"{'ideal':>7} {'of ideal':>8} {'peak':>5} {'mongo/t':>7} {'redis/t':>7} {'trips/t':>7} "
        f"{'push→1st s':>10} {'fill s':>6} {'steady':>6} {'cpu ms/t':>8} {'cores@ideal':>11} "
        f"{'rss MB':>7} {'vs upstr':>8}"
    )
    for r in rows:
        print(
            f"{r.system:>8} {r.workers:>5} {r.concurrency:>5} {r.latency_s:>5g} "
            f"{r.trajectories:>6} {r.traj_per_s:>8.2f} {num(r.ideal_traj_per_s, '.2f'):>7} "
            f"{num(r.fraction_of_ideal, '.2f'):>8} {r.peak_in_flight:>5} "
            f"{num(r.mongo_ops_per_traj, '.2f'):>7} {num(r.redis_cmds_per_traj, '.1f'):>7} "
            f"{num(r.redis_round_trips_per_traj, '.1f'):>7} "
            f"{num(r.push_to_first_start_s, '.2f'):>10} {num(r.fill_s, '.2f'):>6} "
            f"{num(r.steady_fraction_of_ideal, '.2f'):>6} "
            f"{num(r.worker_cpu_ms_per_traj, '.2f'):>8} {num(r.worker_cores_at_ideal, '.2f'):>11} "
            f"{num(r.worker_rss_mb, '.0f'):>7} "
            f"{num(r.vs_upstream, '.0f'):>8}"
        )
    for r in rows:
        if r.system == "agentrl":
            share = ", ".join(f"{k} {v:.0%}" for k, v in r.cpu_share.items())
            print(
                f"\n{r.workers} proc × {r.concurrency} at {r.latency_s:g} s — trajectory "
                f"started → finished {r.traj_latency_s:.2f} s (p90 {r.traj_latency_p90_s:.2f} "
                f"s); CPU of a core: {share}\n  mongo: {r.mongo_ops}\n  redis: {r.redis_top}"
            )


def parse_args() -> argparse.Namespace:
    """The bench's command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--calls", type=int, default=3, help="chat calls per trajectory")
    parser.add_argument(
        "--waves", type=int, default=2, help="trajectories = waves × concurrency × workers"
    )
    parser.add_argument("--concurrency", type=int, nargs="*", default=[64, 256, 512, 1024])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1],
        help="worker processes (rows with more than 1 use --multi-concurrency)",
    )
    parser.add_argument(
        "--multi-concurrency",
        type=int,
        default=256,
        help="concurrency per process of the rows with several processes",
    )
    parser.add_argument(
        "--ceiling", type=int, default=256, help="concurrency of the zero-latency rows (0: none)"
    )
    parser.add_argument("--ceiling-waves", type=int, default=8)
    parser.add_argument("--upstream", default="", help="upstream AgentRL's src directory")
    parser.add_argument("--upstream-python", default=sys.executable)
    parser.add_argument("--upstream-max-s", type=float, default=UPSTREAM_MAX_S)
    parser.add_argument("--upstream-concurrency", type=int, nargs="*", default=[64, 256])
    parser.add_argument("--row-timeout-s", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--keep-db", action="store_true", help="keep each row's database")
    return parser.parse_args()


def measure(args: argparse.Namespace, workdir: Path) -> list[Row]:
    """The agentrl rows: the latency rows (1 process at each ``--concurrency``, then each
    ``--workers`` count above 1), then the zero-latency ceiling rows, over one Redis, one
    MongoDB-wire server and one stub per latency."""
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if not os.environ.get("AGENTRL_DB_CONNECTION_STRING"):
            os.environ["AGENTRL_EMBEDDED_DB_DIR"] = str(workdir / "mongo")
            stack.callback(stop_embedded_mongo, workdir / "mongo")
        redis = stack.enter_context(redis_server(workdir))
        if args.latency_s > 0:
            url, stub = stack.enter_context(stub_server(args.latency_s, workdir))
            shapes = [(1, c) for c in args.concurrency]
            shapes += [(w, args.multi_concurrency) for w in args.workers if w > 1]
            for workers, concurrency in shapes:
                rows.append(run_row(args, url, stub.pid, redis, workers, concurrency,
                                    args.latency_s, workdir))
        if args.ceiling:
            url, stub = stack.enter_context(stub_server(0.0, workdir))
            ceiling_args = argparse.Namespace(**{**vars(args), "waves": args.ceiling_waves})
            for workers in sorted(set(args.workers) | {1}):
                rows.append(run_row(ceiling_args, url, stub.pid, redis, workers, args.ceiling,
                                    0.0, workdir))
    return rows


def add_upstream(args: argparse.Namespace, rows: list[Row]) -> None:
    """Run upstream AgentRL's scheduler at each ``--upstream-concurrency`` and set each
    matching one-process agentrl row's ``vs_upstream``."""
    for concurrency in args.upstream_concurrency:
        upstream = run_upstream(args, concurrency, args.latency_s)
        if upstream is None:
            continue
        for row in rows:
            if (row.concurrency, row.workers, row.latency_s) == (concurrency, 1, args.latency_s):
                row.vs_upstream = row.traj_per_s / upstream.traj_per_s
        rows.append(upstream)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    workdir = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    load = os.getloadavg()
    rows = measure(args, workdir)
    if args.upstream:
        add_upstream(args, rows)
    load_after = os.getloadavg()
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        print(
            json.dumps(
                {"load_avg_before": load, "load_avg_after": load_after, "cpus": os.cpu_count()}
            )
        )
        return
    print_table(rows)
    print(
        f"\nload average before {load[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} CPUs; logs in {workdir})"
    )


if __name__ == "__main__":
    main()
