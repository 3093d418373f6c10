"""`agentrl status`: one snapshot of a run — queues, workers, inference services (running
requests from their slot leases), why sampling is paused, tasks and records per split and
epoch (running trajectories included), failures per kind, the global step and the staleness of
READY records.

:func:`collect_status` returns a JSON-able dict (``agentrl status --json`` prints it);
:func:`render_status` draws it as rich tables. API keys are never part of it (services are read
through :meth:`InferenceService.public_view`).

Counts per split and epoch use one ``$group`` by status per ``(split, epoch)`` (single-field
groups: they also run on nx-27017), so the statuses of one row sum to its ``total``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from rich.console import Console, Group
from rich.table import Table

from agentrl.celery_app import EVALUATION_QUEUE, SAMPLING_QUEUE
from agentrl.databases import (
    Databases,
    Record,
    RecordStatus,
    ServiceStatus,
    Task,
    TaskStatus,
)
from agentrl.inference.services import list_services
from agentrl.rollout.ledger import GlobalStep, RedisKeys, failures_by_kind, training_finished
from agentrl.rollout.slots import slot_loads

QUEUES = (SAMPLING_QUEUE, EVALUATION_QUEUE)
"""The broker queues reported."""
INSPECT_TIMEOUT_S = 1.0
"""Seconds the worker inspection waits for replies (each broadcast)."""


def queue_depths(app: Celery) -> dict[str, Any]:
    """Messages waiting in each queue, and messages delivered but not yet acknowledged.

    Returns:
        ``{"sampling": n, "evaluation": n, "unacked": n}`` (``unacked``: taken by a worker and
        running or reserved, over all queues).
    """
    depths: dict[str, Any] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in QUEUES:
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:  # an empty Redis list does not exist
                depths[name] = 0
        unacked_key = getattr(channel, "unacked_key", None)
        client = getattr(channel, "client", None)
        depths["unacked"] = int(client.hlen(unacked_key)) if unacked_key and client else None
    return depths


def worker_status(app: Celery, timeout_s: float = INSPECT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Workers of this run's broker, through Celery's inspect broadcasts (``stats``,
    ``active``, ``active_queues``).

    Returns:
        One dict per worker, sorted by name: ``name``, ``queues``, ``concurrency``, ``active``
        (messages it is running), ``processed`` (messages finished, per task name), ``pid``.
    """
    inspect = app.control.inspect(timeout=timeout_s)
    stats = inspect.stats() or {}
    active = inspect.active() or {}
    queues = inspect.active_queues() or {}
    workers = []
    for name in sorted(set(stats) | set(active) | set(queues)):
        info = stats.get(name) or {}
        workers.append({
            "name": name,
            "queues": sorted(q.get("name", "") for q in queues.get(name) or []),
            "concurrency": (info.get("pool") or {}).get("max-concurrency"),
            "active": len(active.get(name) or []),
            "processed": dict(info.get("total") or {}),
            "pid": info.get("pid"),
        })
    return workers


def service_status(dbs: Databases, now: datetime | None = None) -> list[dict[str, Any]]:
    """Registered inference services, never their API keys.

    Returns:
        One dict per service: ``name``, ``kind``, ``status`` (UP/DOWN), ``endpoint``,
        ``models``, ``running_req_count`` (live request slots), ``weight_version``,
        ``heartbeat_age_s`` (seconds since
        its last heartbeat) and ``routable`` (UP with a fresh heartbeat, or external).
    """
    now = now or datetime.now(UTC)
    ttl_s = dbs.config.service_heartbeat_ttl_s
    keys = RedisKeys(dbs.config.key_prefix)
    views = list_services(dbs.store)
    loads = slot_loads(dbs.redis, [keys.service_slots(str(v["_id"])) for v in views])
    out = []
    for view, running in zip(views, loads, strict=True):
        beat = view.get("heartbeat_at")
        if isinstance(beat, datetime) and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        age_s = (now - beat).total_seconds() if isinstance(beat, datetime) else None
        up = view.get("status") == ServiceStatus.UP.value
        fresh = view.get("kind") == "external" or (age_s is not None and age_s <= ttl_s)
        out.append({
            "name": view.get("name"), "kind": view.get("kind"), "status": view.get("status"),
            "endpoint": view.get("endpoint"), "models": list(view.get("models") or []),
            "running_req_count": running,
            "weight_version": view.get("weight_version"),
            "heartbeat_age_s": None if age_s is None else round(age_s, 1),
            "routable": up and fresh,
        })
    return out


def counts_by_split_epoch(
    dbs: Databases, model: type[Task] | type[Record], statuses: list[str]
) -> list[dict[str, Any]]:
    """Documents of ``model`` per ``(split, epoch)`` and status.

    Returns:
        Rows sorted by split and epoch: ``split``, ``epoch``, ``total`` and ``by_status`` (every
        status of ``statuses``, 0 when absent, plus any other status found).
    """
    coll = dbs.store.collection(model)
    rows = []
    for split in sorted(str(s) for s in coll.distinct("split")):
        for epoch in sorted(int(e) for e in coll.distinct("epoch", {"split": split})):
            by_status = dict.fromkeys(statuses, 0)
            for group in coll.aggregate([
                {"$match": {"split": split, "epoch": epoch}},
                {"$group": {"_id": "$status", "n": {"$sum": 1}}},
            ]):
                by_status[str(group["_id"])] = int(group["n"])
            rows.append({"split": split, "epoch": epoch, "total": sum(by_status.values()),
                         "by_status": by_status})
    return rows


def ready_staleness(dbs: Databases, global_step: int) -> dict[str, Any]:
    """How far behind the policy the READY train records waiting for training were sampled.

    Staleness of a record = ``global_step - created_at_step`` (optimizer steps), over the
    untrained ones only: a trained record's age says nothing about the data still to train (the
    staleness each step trained at is in the run's metrics and ``summary.json``).

    Returns:
        ``ready`` (READY train records), ``untrained`` (of them, never trained on),
        ``max_steps``, ``mean_steps``, ``min_steps`` of the untrained (``None`` when there is
        none).
    """
    coll = dbs.store.collection(Record)
    match = {"split": "train", "status": RecordStatus.READY.value}
    ready = coll.count_documents(match)
    groups = list(coll.aggregate([
        {"$match": {**match, "trained_count": 0}},
        {"$group": {"_id": None, "n": {"$sum": 1}, "lo": {"$min": "$created_at_step"},
                    "hi": {"$max": "$created_at_step"}, "avg": {"$avg": "$created_at_step"}}},
    ]))
    if not groups or not groups[0].get("n"):
        return {"ready": ready, "untrained": 0, "max_steps": None, "mean_steps": None,
                "min_steps": None}
    g = groups[0]
    return {
        "ready": ready,
        "untrained": int(g["n"]),
        "max_steps": global_step - int(g["lo"]),
        "mean_steps": round(global_step - float(g["avg"]), 3),
        "min_steps": global_step - int(g["hi"]),
    }


def sampling_paused(dbs: Databases) -> dict[str, Any]:
    """Why sampling waits now: service name → ``{reason, since}`` (empty while it flows)."""
    raw = dbs.redis.hgetall(RedisKeys(dbs.config.key_prefix).sampling_paused)
    out = {}
    for name, value in raw.items():
        try:
            out[str(name)] = json.loads(value)
        except ValueError:
            out[str(name)] = {"reason": str(value)}
    return out


def collect_status(
    dbs: Databases, app: Celery, inspect_timeout_s: float = INSPECT_TIMEOUT_S,
    with_workers: bool = True,
) -> dict[str, Any]:
    """One snapshot of the run (JSON-able; see the module docstring).

    Args:
        dbs: connections of the run.
        app: the run's Celery app (same broker and key prefix).
        inspect_timeout_s: seconds each worker inspection waits for replies.
        with_workers: ask the workers (3 broadcasts of ``inspect_timeout_s``); off: ``workers``
            is ``None``.

    Returns:
        ``run`` (name, key prefix, database), ``global_step``, ``training_finished`` (the
        trainer ended the run: no more training epochs are pushed), ``queues``
        (:func:`queue_depths`), ``workers`` (:func:`worker_status`), ``services``
        (:func:`service_status`), ``tasks`` and ``records`` (:func:`counts_by_split_epoch`),
        ``staleness`` (:func:`ready_staleness`), ``failures`` (FAILED records per error kind),
        ``sampling_paused`` (:func:`sampling_paused`), ``collected_at`` (ISO UTC).
    """
    step = GlobalStep(dbs).get()
    return {
        "run": {"name": dbs.config.name, "key_prefix": dbs.config.key_prefix,
                "db_name": dbs.config.db_name},
        "collected_at": datetime.now(UTC).isoformat(),
        "global_step": step,
        "training_finished": training_finished(dbs),
        "queues": queue_depths(app),
        "workers": worker_status(app, inspect_timeout_s) if with_workers else None,
        "services": service_status(dbs),
        "tasks": counts_by_split_epoch(dbs, Task, [s.value for s in TaskStatus]),
        "records": counts_by_split_epoch(dbs, Record, [s.value for s in RecordStatus]),
        "staleness": ready_staleness(dbs, step),
        "failures": failures_by_kind(dbs),
        "sampling_paused": sampling_paused(dbs),
    }


def _counts_table(title: str, rows: list[dict[str, Any]], statuses: list[str]) -> Table:
    table = Table("split", "epoch", *statuses, "total", title=title)
    for row in rows:
        table.add_row(row["split"], str(row["epoch"]),
                      *(str(row["by_status"].get(s, 0)) for s in statuses), str(row["total"]))
    return table


def render_status(status: dict[str, Any], console: Console | None = None) -> None:
    """Print a snapshot from :func:`collect_status` as rich tables."""
    console = console or Console()
    run = status["run"]
    stale = status["staleness"]
    head = Table.grid(padding=(0, 2))
    head.add_row("run", f"{run['name']} (prefix {run['key_prefix']}, db {run['db_name']})")
    head.add_row("global step", str(status["global_step"]))
    if status.get("training_finished"):
        head.add_row("training", "[green]finished[/green] (no more training epochs are pushed; "
                     "the run's own engines stopped with it)")
    queues = status["queues"]
    head.add_row("queues", ", ".join(f"{k}={v}" for k, v in queues.items()))
    failures = status.get("failures") or {}
    head.add_row("failed records", ", ".join(f"{k}={v}" for k, v in failures.items()) or "none")
    for name, why in (status.get("sampling_paused") or {}).items():
        head.add_row("[yellow]sampling paused", f"{name}: {why.get('reason')}")
    head.add_row("READY train records",
                 f"{stale['ready']} ({stale['untrained']} untrained); untrained staleness steps "
                 f"max={stale['max_steps']} mean={stale['mean_steps']} min={stale['min_steps']}")
    parts: list[Any] = [head]
    workers = Table("worker", "queues", "concurrency", "active", "processed", title="workers")
    for w in status["workers"] or []:
        done = ", ".join(f"{k}={v}" for k, v in sorted(w["processed"].items()))
        workers.add_row(w["name"], ",".join(w["queues"]), str(w["concurrency"]),
                        str(w["active"]), done)
    if status["workers"] is None:
        workers.caption = "(not inspected)"
    parts.append(workers)
    services = Table("service", "kind", "status", "endpoint", "models", "running", "weights",
                     "heartbeat age (s)", title="inference services")
    for s in status["services"]:
        flag = s["status"] if s["routable"] or s["status"] != "UP" else "UP (stale)"
        services.add_row(s["name"], s["kind"], flag, s["endpoint"], ",".join(s["models"]),
                         str(s["running_req_count"]), str(s["weight_version"]),
                         str(s["heartbeat_age_s"]))
    parts.append(services)
    parts.append(_counts_table("tasks", status["tasks"], [s.value for s in TaskStatus]))
    parts.append(_counts_table("records", status["records"], [s.value for s in RecordStatus]))
    console.print(Group(*parts))
