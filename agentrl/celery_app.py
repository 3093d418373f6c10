"""The Celery app: Redis queues carry sampling claims; beat pushes epochs and re-sends claims
whose lease expired.

``celery -A agentrl worker`` and ``celery -A agentrl beat`` work with no other flags: the app reads
its configuration with :func:`agentrl.configs.load_config` (YAML from ``$AGENTRL_CONFIG`` plus
``AGENTRL_*`` variables) the first time it is used. Settings (see :func:`celery_settings`):

- JSON only (``task_serializer`` and ``accept_content`` name JSON alone);
- ``task_acks_late`` + ``task_reject_on_worker_lost``, prefetch multiplier 1: a sampling message
  is acknowledged once its trajectory is leased (the ledger, :mod:`agentrl.rollout.ledger`, owns
  it from then on), so the Redis visibility timeout (``visibility_timeout_s``) only matters for
  a worker that died holding a message it had not handed over yet;
- queues ``sampling`` and ``evaluation``; every Redis key of the broker and the result backend
  starts with ``<key_prefix>:`` (kombu's ``global_keyprefix``), so runs never share queues;
- task events off unless ``task_events`` is set: Flower turns them on in the workers it watches
  (its periodic ``enable_events``), so they cost nothing while nobody looks;
- the ``threads`` pool with :data:`HANDOFF_THREADS` threads: each hands a trajectory to the
  process's one asyncio event loop (:mod:`agentrl.rollout.runtime`) and returns, so one worker
  process keeps up to ``max_concurrent_samples_per_process`` trajectories in flight as
  coroutines (``-P prefork -c N`` runs one such loop per child process);
- beat's schedule: ``push_epoch(split)`` every ``beat_interval_s`` and housekeeping every
  ``housekeeping_interval_s``, run inside the beat process (:mod:`beat.schedule`).

Start from Python or a subprocess::

    AGENTRL_CONFIG=run.yaml celery -A agentrl worker -Q sampling,evaluation
    AGENTRL_CONFIG=run.yaml celery -A agentrl beat
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.rollout.claims import Claim

SAMPLE_TASK = "agentrl.sample"
"""Name of the sampling job: kwargs are a :class:`Claim` (JSON)."""
PUSH_EPOCH_TASK = "agentrl.push_epoch"
"""Name of the epoch-push job (args: ``split``)."""
HOUSEKEEPING_TASK = "agentrl.housekeeping"
"""Name of the job re-sending claims whose lease expired."""
SAMPLING_QUEUE = "sampling"
EVALUATION_QUEUE = "evaluation"
HANDOFF_THREADS = 4
"""Threads of the default pool: they only hand trajectories over, so a few are enough (16 fill a
512-trajectory process faster, but kombu 5.7's consumer then dies on a Redis restart: closing
the lost connection restores the more numerous unacknowledged messages through a client it
cannot build — ``'NoneType' object has no attribute 'hostname'``)."""
TASK_MODULES = [
    "workers.sampling",
    "workers.evaluation",
    "beat.schedule",
    "agentrl.rollout.math",
    "agentrl.rollout.osworld",
    "agentrl.rollout.mcp",
]
"""Modules every worker and beat import (they register the jobs and the built-in samplers)."""


def celery_settings(config: AgentTrainingConfig) -> dict[str, Any]:
    """The Celery settings for ``config`` (see the module docstring)."""
    prefix = {"global_keyprefix": f"{config.key_prefix}:"}
    extra = [m.strip() for m in config.sampler_modules.split(",") if m.strip()]
    schedule: dict[str, Any] = {
        "push-epoch-train": {
            "task": PUSH_EPOCH_TASK, "schedule": config.beat_interval_s, "args": ("train",),
        },
        "housekeeping": {"task": HOUSEKEEPING_TASK, "schedule": config.housekeeping_interval_s},
    }
    if config.eval_file:
        schedule["push-epoch-eval"] = {
            "task": PUSH_EPOCH_TASK, "schedule": config.beat_interval_s, "args": ("eval",),
        }
    # kombu sweeps unacked messages every interval*throttle seconds; keep that near
    # visibility/2 for short timeouts and at its default (100 s) for long ones
    restore_interval_s = max(1, min(10, config.visibility_timeout_s // 2))
    restore_throttle = max(1, min(10, config.visibility_timeout_s // (2 * restore_interval_s)))
    return {
        "broker_url": config.effective_broker_url,
        "result_backend": config.effective_result_backend,
        "broker_transport_options": {
            "visibility_timeout": config.visibility_timeout_s,
            "unacked_restore_interval": restore_interval_s,
            "unacked_restore_throttle": restore_throttle,
            **prefix,
        },
        "result_backend_transport_options": dict(prefix),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": HANDOFF_THREADS,
        "worker_send_task_events": config.task_events,
        "task_send_sent_event": config.task_events,
        "worker_hijack_root_logger": False,
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (SAMPLING_QUEUE, EVALUATION_QUEUE)
        ],
        "task_default_exchange": SAMPLING_QUEUE,
        "task_default_routing_key": SAMPLING_QUEUE,
        "task_default_queue": SAMPLING_QUEUE,
        "imports": [*TASK_MODULES, *extra],
        "beat_schedule": schedule,
        "beat_scheduler": "beat.schedule:LocalScheduler",
        "beat_max_loop_interval": max(1.0, min(config.beat_interval_s, 5.0)),
    }


def make_app(config: AgentTrainingConfig | None = None) -> Celery:
    """A Celery app for ``config``; ``None`` loads the configuration lazily on first use.

    The configuration is kept as ``app.agentrl_config`` (read it with :func:`app_config`).
    """
    app = Celery("agentrl", set_as_current=config is None)

    def configure(sender: Celery, **_: Any) -> None:
        cfg = getattr(sender, "agentrl_config", None) or load_config()
        sender.agentrl_config = cfg
        sender.conf.update(celery_settings(cfg))

    if config is not None:
        app.agentrl_config = config
    app.on_configure.connect(configure, weak=False)
    return app


def app_config(app: Celery) -> AgentTrainingConfig:
    """The configuration the app was built with (loading it if the app is not configured)."""
    cfg = getattr(app, "agentrl_config", None)
    if cfg is None:
        _ = app.conf.broker_url  # configures the app (on_configure)
        cfg = app.agentrl_config
    return cfg


def queue_for(split: str) -> str:
    """The queue a claim of ``split`` goes to: ``sampling`` for train, ``evaluation`` otherwise."""
    return SAMPLING_QUEUE if split == "train" else EVALUATION_QUEUE


def enqueue_claims(app: Celery, claims: Iterable[Claim]) -> int:
    """Send one sampling message per claim over one broker connection.

    Nobody reads a sampling job's result, so none is asked for (no result channel subscribed).

    Returns:
        The number of messages sent.
    """
    sent = 0
    claims = list(claims)
    with app.producer_or_acquire() as producer:
        for name in sorted({queue_for(c.split) for c in claims}):
            # declared on every send: a Redis that came back empty has lost the bindings, and
            # kombu's cache of declared queues does not know it
            app.amqp.queues[name].bind(producer.channel).declare()
        for claim in claims:
            app.send_task(
                SAMPLE_TASK, kwargs=claim.to_json(), queue=queue_for(claim.split),
                producer=producer, ignore_result=True,
            )
            sent += 1
    return sent


def purge_claims(app: Celery) -> int:
    """Drop the messages waiting in the ``sampling`` queue (a run that ended: its unfinished
    trajectories stay ``created`` Records, re-sent when the run is resumed).

    Returns:
        The number of messages dropped.
    """
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(SAMPLING_QUEUE) or 0)


def requested_pool(argv: Sequence[str]) -> str | None:
    """The pool a ``celery worker`` command line asks for (``-P x``, ``-Px``, ``--pool[=]x``).

    Celery's CLI cannot tell an explicit ``-P prefork`` from its default, so the worker reads
    its own command line to honour it.
    """
    for i, arg in enumerate(argv):
        if arg in ("-P", "--pool") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return None


app = make_app()
"""The app ``celery -A agentrl`` finds (configured from ``load_config()`` on first use)."""
