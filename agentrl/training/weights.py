"""Publishing new weights to the inference services after an optimizer step.

The trainer calls a :class:`WeightPublisher` with the directory it saved the model to and the
new global step. :class:`ManagerWeightPublisher` is the real one: under the split lock
``push_epoch:<split>`` (no epoch is pushed meanwhile) it has every
:class:`~agentrl.inference.manager.InferenceManager` load the weights from disk; the manager
marks its service DOWN while loading, so routing holds new LLM calls until the service is UP
again with ``weight_version == str(step)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from agentrl.databases import Databases, DistributedLock
from agentrl.rollout.ledger import RedisKeys

log = logging.getLogger(__name__)

SPLIT_LOCK_TTL_S = 600.0
"""Seconds the split lock lives if the trainer dies during a weight update."""

SPLIT_LOCK_WAIT_S = 60.0
"""Longest wait for the split lock (an epoch push in progress) before updating anyway."""

SLOW_PUSH_S = 10.0
"""A weight push longer than this (seconds) is reported as a warning, with its parts."""


class WeightPublisher(Protocol):
    """Makes the inference services serve the weights in ``model_dir`` as version ``version``."""

    def __call__(self, model_dir: Path, version: int) -> None: ...


class WeightUpdatable(Protocol):
    """What :class:`ManagerWeightPublisher` needs of an InferenceManager."""

    def update_weights(self, model_dir: str | Path, version: int) -> None: ...


def no_publish(model_dir: Path, version: int) -> None:
    """A publisher that does nothing (training without inference services)."""


class ManagerWeightPublisher:
    """Pushes weights to every manager's service while epoch pushes are held.

    Args:
        managers: the InferenceManagers this trainer owns (one per DP group on this node).
        dbs: connections (for the split lock).
        split: the split whose pushes are held.
    """

    def __init__(
        self, managers: Sequence[WeightUpdatable], dbs: Databases, split: str = "train"
    ) -> None:
        self.managers, self.dbs, self.split = list(managers), dbs, split

    def __call__(self, model_dir: Path, version: int) -> None:
        """Update every service to ``model_dir`` as ``version``.

        The duration is logged at INFO, or as a WARNING naming the wait for the split lock and
        the load when the push took longer than :data:`SLOW_PUSH_S`.
        """
        started = time.monotonic()
        lock = DistributedLock(
            self.dbs.redis, RedisKeys(self.dbs.config.key_prefix).lock(f"push_epoch:{self.split}"),
            ttl_s=SPLIT_LOCK_TTL_S)
        held = lock.acquire(blocking=True, timeout_s=SPLIT_LOCK_WAIT_S)
        if not held:
            log.warning("split lock push_epoch:%s busy; updating weights anyway", self.split)
        locked = time.monotonic()
        try:
            for manager in self.managers:
                manager.update_weights(model_dir, version)
        finally:
            if held:
                lock.release()
        total_s, lock_s = time.monotonic() - started, locked - started
        if total_s > SLOW_PUSH_S:
            log.warning(
                "weight push v%d to %d service(s) took %.1f s (%.1f s waiting for the epoch "
                "push lock, %.1f s loading; services hold new LLM calls meanwhile)",
                version, len(self.managers), total_s, lock_s, total_s - lock_s,
            )
        else:
            log.info("weights v%d pushed to %d service(s) in %.1f s",
                     version, len(self.managers), total_s)
