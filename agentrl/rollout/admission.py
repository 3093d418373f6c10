"""Bounded off-policyness: how many train tasks beat may release for sampling now.

With ``max_staleness: S`` (steps) an epoch's train tasks are inserted unreleased
(``released: false``, no claims sent) and beat releases them in dataset order, as the budget
allows. One step trains ``G = ceil(train_batch_size / num_generations)`` groups; a group is
*pending* while it is released and not completed (being sampled), READY and not yet trained, or
claimed by the step in training. Beat keeps at most ``(S + 1) * G`` groups pending, so whatever
is sampled now at global step ``g`` is trained by step ``g + S + 1`` (from weights at most ``S``
steps newer than the ones sampling it) when groups are trained in order. A group without score
spread (abandoned) or dropped as stale stops being pending, and the next task is released in its
place. ``S = 0`` is synchronous on-policy RL: one batch is sampled, trained, then the next.

Records that would be dropped are thus never sampled: sampling pauses while the trainer is
behind, rather than running ahead.
"""

from __future__ import annotations

import logging
import math

from agentrl.databases import Databases, Record, RecordStatus, Task, TaskStatus
from agentrl.rollout.ledger import GlobalStep

log = logging.getLogger(__name__)


def groups_per_step(train_batch_size: int, num_generations: int) -> int:
    """Groups one optimizer step takes: ``ceil(train_batch_size / num_generations)`` (>= 1)."""
    return max(1, math.ceil(train_batch_size / num_generations))


def pending_groups(dbs: Databases, step: int) -> int:
    """Train groups released and not done with: being sampled, READY and untrained, or claimed
    by the step in training (``train_claim_step > step``). Two queries.

    Args:
        dbs: connections of the run.
        step: the global step now.
    """
    sampling = dbs.store.collection(Task).count_documents(
        {
            "split": "train",
            "released": {"$ne": False},
            "status": {"$ne": TaskStatus.COMPLETED.value},
        }
    )
    waiting = dbs.store.collection(Record).distinct(
        "task_id",
        {
            "split": "train",
            "status": RecordStatus.READY.value,
            "trained_count": 0,
            "$or": [{"train_claim_owner": ""}, {"train_claim_step": {"$gt": step}}],
        },
    )
    return int(sampling) + len(waiting)


def release_budget(dbs: Databases) -> int | None:
    """How many more train tasks may be released now (``None``: no bound is configured).

    Returns:
        ``(max_staleness + 1) * G`` minus the pending groups, at least 0.
    """
    config = dbs.config
    if config.max_staleness is None:
        return None
    step = GlobalStep(dbs).get()
    allowed = (config.max_staleness + 1) * groups_per_step(
        config.train_batch_size, config.num_generations
    )
    return max(0, allowed - pending_groups(dbs, step))
