"""The run side of the ledger (sync: beat, schedulers, the trainer, the driver): the durable run
state (:class:`GlobalStep`, pushed epochs, whether training is finished), opening claims, and
housekeeping."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from pymongo import ReturnDocument

from agentrl.databases import (
    FINAL_RECORD_STATUSES,
    RUN_STATE_ID,
    Databases,
    ErrorKind,
    Record,
    RecordStatus,
    RunState,
    Task,
    TaskStatus,
    utcnow,
)
from agentrl.rollout.claims import Claim
from agentrl.rollout.leases import owned_members, take_expired
from agentrl.rollout.ledger.rules import (
    Enqueue,
    RedisKeys,
    claim_of,
    group_outcome,
    scored_members,
)

log = logging.getLogger(__name__)

REBUILD_GRACE_FACTOR = 2.0
"""After Redis comes back empty, housekeeping waits this many heartbeats before rebuilding
claims, so that running workers first retake their leases."""


class GlobalStep:
    """The trainer's global step: stored in the run state (MongoDB), cached in Redis.

    Args:
        dbs: sync connections of the run.
    """

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.key = RedisKeys(dbs.config.key_prefix).global_step
        self.runs = dbs.store.collection(RunState)

    def get(self) -> int:
        """The current step (0 before the first); a Redis miss reloads it from MongoDB."""
        cached = self.dbs.redis.get(self.key)
        if cached is not None:
            return int(cached)
        raw = self.runs.find_one({"_id": RUN_STATE_ID}, {"global_step": 1})
        value = int((raw or {}).get("global_step") or 0)
        self.dbs.redis.set(self.key, value, nx=True)
        return value

    def set(self, value: int) -> None:
        """Set the step (a fresh run, a resume from a checkpoint)."""
        self.runs.update_one({"_id": RUN_STATE_ID},
                             {"$set": {"global_step": int(value), "updated_at": utcnow()},
                              "$setOnInsert": {"_type": RunState.__name__,
                                               "created_at": utcnow(), "pushed_epochs": {}}},
                             upsert=True)
        self.dbs.redis.set(self.key, int(value))

    def incr(self) -> int:
        """Add one step (after a published optimizer step) and return the new value."""
        raw = self.runs.find_one_and_update(
            {"_id": RUN_STATE_ID},
            {"$inc": {"global_step": 1}, "$set": {"updated_at": utcnow()},
             "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                              "pushed_epochs": {}}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
        value = int(raw["global_step"])
        self.dbs.redis.set(self.key, value)
        return value


def pushed_epoch(dbs: Databases, split: str) -> int:
    """The last epoch of ``split`` whose claims were all sent (0 when none)."""
    raw = dbs.store.collection(RunState).find_one({"_id": RUN_STATE_ID}, {"pushed_epochs": 1})
    return int(((raw or {}).get("pushed_epochs") or {}).get(split, 0))


def set_pushed_epoch(dbs: Databases, split: str, epoch: int) -> None:
    """Record that every claim of ``split``/``epoch`` was sent."""
    dbs.store.collection(RunState).update_one(
        {"_id": RUN_STATE_ID},
        {"$set": {f"pushed_epochs.{split}": int(epoch), "updated_at": utcnow()},
         "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                          "global_step": 0}},
        upsert=True,
    )


def training_finished(dbs: Databases) -> bool:
    """Whether the trainer of the run is done (no more train epochs are pushed)."""
    raw = dbs.store.collection(RunState).find_one({"_id": RUN_STATE_ID}, {"training_finished": 1})
    return bool((raw or {}).get("training_finished"))


def set_training_finished(dbs: Databases, finished: bool) -> None:
    """Record that the trainer is done (``True``) or training again (``False``)."""
    dbs.store.collection(RunState).update_one(
        {"_id": RUN_STATE_ID},
        {"$set": {"training_finished": bool(finished), "updated_at": utcnow()},
         "$setOnInsert": {"_type": RunState.__name__, "created_at": utcnow(),
                          "global_step": 0, "pushed_epochs": {}}},
        upsert=True,
    )


def open_claims(dbs: Databases, claims: list[Claim], enqueue: Enqueue) -> int:
    """Insert a ``created`` Record per claim (existing ones are kept) and send the claims.

    Returns:
        The number of messages sent.
    """
    if not claims:
        return 0
    now = utcnow()
    dbs.store.insert_many([
        Record(id=c.record_id, task_id=c.task_id, traj_id=c.traj_id, epoch=c.epoch,
               split=c.split, sampler=c.sampler, model=c.model, resample=c.resample,
               status=RecordStatus.CREATED, created_at=now, updated_at=now)
        for c in claims
    ])
    dbs.redis.set(RedisKeys(dbs.config.key_prefix).alive, "1")
    enqueue(claims)
    return len(claims)


@dataclass
class Housekeeping:
    """What one :func:`housekeep` pass did.

    Attributes:
        resent: claims re-sent (lapsed leases, due retries).
        rebuilt: claims rebuilt from MongoDB after Redis came back empty.
        groups_completed: groups completed whose last member died after scoring.
    """

    resent: int = 0
    rebuilt: int = 0
    groups_completed: int = 0


_redis_lost_since: dict[str, float] = {}


def housekeep(dbs: Databases, enqueue: Enqueue, complete_groups: bool = True) -> Housekeeping:
    """One pass of the ledger's housekeeping (beat runs it every ``housekeeping_interval_s``).

    1. lapsed leases and due retries are re-sent (work ∝ what expired);
    2. when Redis lost the run's state (no ``alive`` marker while epochs are unfinished), the
       claims of unfinished tasks whose Record is not final and not held are rebuilt from
       MongoDB and re-sent — after ``REBUILD_GRACE_FACTOR`` heartbeats, so that running
       workers first retake their leases;
    3. groups whose every trajectory has an outcome but that are not completed are completed.
    """
    keys = RedisKeys(dbs.config.key_prefix)
    done = Housekeeping()
    expired = take_expired(dbs.redis, keys.trajectories)
    if expired.lapsed:  # a worker died or froze holding them
        log.warning("re-sending %d claims whose leases lapsed", len(expired.lapsed))
    if expired.due:  # handed back by their workers (retry after a backoff, worker stopping)
        log.info("re-sending %d claims handed back for a retry", len(expired.due))
    claims = [Claim.from_json(json.loads(p)) for p in expired.lapsed + expired.due]
    if claims:
        enqueue(claims)
        done.resent = len(claims)
    if not dbs.redis.exists(keys.alive):
        done.rebuilt = _rebuild_after_redis_loss(dbs, keys, enqueue)
    if complete_groups:
        done.groups_completed = complete_stuck_groups(dbs)
    return done


def _unfinished_tasks(dbs: Databases) -> list[dict[str, Any]]:
    return list(dbs.store.collection(Task).find(
        {"status": {"$ne": TaskStatus.COMPLETED.value}, "released": {"$ne": False}},
        {"num_generations": 1, "scores": 1, "failed": 1, "split": 1, "epoch": 1, "sampler": 1,
         "status": 1}))


def _rebuild_after_redis_loss(dbs: Databases, keys: RedisKeys, enqueue: Enqueue) -> int:
    """Re-send the claims Redis lost (see :func:`housekeep`). Returns how many."""
    if not _unfinished_tasks(dbs):
        dbs.redis.set(keys.alive, "1")
        return 0
    first_seen = _redis_lost_since.setdefault(keys.prefix, time.monotonic())
    if time.monotonic() - first_seen < REBUILD_GRACE_FACTOR * dbs.config.heartbeat_interval_s:
        return 0
    log.warning("Redis lost the run's ledger state: rebuilding the claims from MongoDB")
    sent = resend_unfinished(dbs, enqueue)
    _redis_lost_since.pop(keys.prefix, None)
    return sent


def resend_unfinished(dbs: Databases, enqueue: Enqueue) -> int:
    """Send again every claim of an unfinished task whose Record is not final and not held by
    a live lease (a run resumed after its queues were emptied, Redis lost them...).

    Returns:
        The number of claims sent.
    """
    keys = RedisKeys(dbs.config.key_prefix)
    tasks = _unfinished_tasks(dbs)
    held = owned_members(dbs.redis, keys.trajectories)
    ids = [t["_id"] for t in tasks]
    records = {r["_id"]: r for r in dbs.store.collection(Record).find(
        {"task_id": {"$in": ids}},
        {"task_id": 1, "traj_id": 1, "epoch": 1, "split": 1, "sampler": 1, "model": 1,
         "resample": 1, "status": 1})} if ids else {}
    claims: list[Claim] = []
    missing: list[Claim] = []
    for task in tasks:
        epoch = int(task.get("epoch", 0))
        for traj_id in range(int(task.get("num_generations", 1))):
            record_id = Record.identity_id(task["_id"], traj_id, epoch)
            raw = records.get(record_id)
            if raw is None:
                missing.append(Claim(task["_id"], traj_id, epoch, str(task.get("split", "train")),
                                     str(task.get("sampler") or "")))
            elif raw.get("status") not in FINAL_RECORD_STATUSES and record_id not in held:
                claims.append(claim_of(raw))
    if claims:
        enqueue(claims)
    open_claims(dbs, missing, enqueue)
    dbs.redis.set(keys.alive, "1")
    if claims or missing:
        log.info("re-sent %d claims of unfinished tasks", len(claims) + len(missing))
    return len(claims) + len(missing)


def complete_stuck_groups(dbs: Databases) -> int:
    """Complete the groups whose every trajectory has an outcome but whose task is not
    COMPLETED (the last member died between its score and the group). Returns how many."""
    completed = 0
    for task in _unfinished_tasks(dbs):
        status = group_outcome(task)
        if status is None:
            continue
        dbs.store.collection(Record).update_many(
            scored_members(task), {"$set": {"status": status.value, "updated_at": utcnow()}})
        dbs.store.collection(Task).update_one(
            {"_id": task["_id"]},
            {"$set": {"status": TaskStatus.COMPLETED.value, "updated_at": utcnow()}})
        completed += 1
    return completed


def failures_by_kind(dbs: Databases, split: str | None = None) -> dict[str, int]:
    """FAILED Records per error kind (``agentrl status``)."""
    match: dict[str, Any] = {"status": RecordStatus.FAILED.value}
    if split is not None:
        match["split"] = split
    counts = {kind.value: 0 for kind in ErrorKind}
    for row in dbs.store.collection(Record).aggregate([
        {"$match": match}, {"$group": {"_id": "$error_kind", "n": {"$sum": 1}}},
    ]):
        counts[str(row["_id"])] = int(row["n"])
    return counts


def clear_run_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every Redis key of the run ``prefix`` (``agentrl run --fresh``). Returns how many."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)
