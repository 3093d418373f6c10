"""`SamplingScheduler`: sample a dataset for the configured epochs, from one Python call.

The AgentRL guide's example runs unchanged::

    scheduler = SamplingScheduler(config=cfg, sampler_class=MySampler, dataset=dataset,
                                  split="train")
    scheduler.run()

``run`` pushes epochs of the torch ``Dataset``/``IterableDataset`` of Tasks with
:func:`~agentrl.rollout.epochs.push_epoch` (under the distributed lock, so several schedulers or a
beat push each epoch once), dispatches the claims through the same Celery queues workers consume,
runs the ledger's housekeeping (claims whose lease lapsed, due retries), and blocks until every
configured epoch is sampled. When no worker answers a ping it runs an in-process worker (the
``threads`` pool feeding one event loop), and when no inference service is registered it starts
the CPU engine for the run (:func:`~agentrl.inference.availability.sampling_inference`), so the
example works on one machine with no other command. A worker started elsewhere must import
the sampler (config ``sampler_modules``) to resolve its registered name.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from celery.contrib.testing.worker import start_worker

from agentrl.celery_app import (
    EVALUATION_QUEUE,
    HANDOFF_THREADS,
    SAMPLING_QUEUE,
    enqueue_claims,
    make_app,
)
from agentrl.configs import AgentTrainingConfig
from agentrl.databases import init_databases
from agentrl.inference.availability import sampling_inference
from agentrl.rollout.epochs import push_epoch, split_done
from agentrl.rollout.ledger import housekeep
from agentrl.rollout.registry import sampler_name_of
from agentrl.rollout.runtime import close_runtime
from agentrl.rollout.sampler import AsyncSampler

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""Seconds between checks of the epoch state."""
PING_TIMEOUT_S = 1.0
"""Seconds to wait for running workers to answer a ping."""


class SamplingScheduler:
    """Pushes epochs of ``dataset`` for ``split`` and waits until they are sampled.

    Args:
        config: the run configuration.
        sampler_class: the sampler (registered under its class name if it has no name).
        dataset: a torch ``Dataset`` or ``IterableDataset`` (or any iterable) of Task instances.
        split: the split to push.
        in_process_worker: run a worker in this process: ``None`` (default) when no worker
            answers a ping, ``True`` always, ``False`` never.
        timeout_s: give up after this many seconds (``None``: wait as long as it takes).
        start_engine: start an inference engine for the run when no service of
            ``model_name`` is registered (False for samplers that call no model).
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        sampler_class: type[AsyncSampler],
        dataset: Iterable[Any],
        split: str = "train",
        *,
        in_process_worker: bool | None = None,
        timeout_s: float | None = None,
        start_engine: bool = True,
    ) -> None:
        self.config, self.sampler_class, self.dataset, self.split = (
            config, sampler_class, dataset, split)
        self.sampler_name = sampler_name_of(sampler_class)
        self.in_process_worker, self.timeout_s = in_process_worker, timeout_s
        self.start_engine = start_engine
        self.app = make_app(config)
        self.epochs_pushed: list[int] = []

    def workers_alive(self) -> bool:
        """Whether a worker of this run's broker (same key prefix) answers a ping."""
        try:
            return bool(self.app.control.ping(timeout=PING_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - no broker answer means no worker
            return False

    def run(self) -> list[int]:
        """Push and sample every configured epoch of the split; blocks until done.

        Returns:
            The epochs this scheduler pushed (another scheduler or beat may push the rest).

        Raises:
            TypeError: a dataset item is not a Task (naming its index).
            TimeoutError: ``timeout_s`` passed before the epochs were sampled.
            EngineStartError: the engine started for the run did not come up.
        """
        dbs = init_databases(self.config)
        enqueue = lambda claims: enqueue_claims(self.app, claims)  # noqa: E731
        start = time.monotonic()
        last_housekeeping = start
        with contextlib.ExitStack() as stack:
            stack.callback(dbs.close)
            stack.enter_context(sampling_inference(self.config, dbs, self.start_engine))
            use_worker = self.in_process_worker
            if use_worker is None:
                use_worker = not self.workers_alive()
            if use_worker:
                self.app.loader.import_default_modules()  # the jobs (config ``imports``)
                stack.callback(close_runtime, self.app)
                stack.enter_context(start_worker(
                    self.app, pool="threads",
                    concurrency=HANDOFF_THREADS,
                    perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30.0,
                    queues=[SAMPLING_QUEUE, EVALUATION_QUEUE],
                ))
            while True:
                epoch = push_epoch(dbs, self.split, self.dataset, self.sampler_name, enqueue)
                if epoch is not None:
                    self.epochs_pushed.append(epoch)
                if split_done(dbs, self.split):
                    return self.epochs_pushed
                now = time.monotonic()
                if now - last_housekeeping >= self.config.housekeeping_interval_s:
                    housekeep(dbs, enqueue)
                    last_housekeeping = now
                if self.timeout_s is not None and now - start > self.timeout_s:
                    raise TimeoutError(
                        f"split {self.split!r} not sampled after {self.timeout_s:.0f} s")
                time.sleep(POLL_S)
