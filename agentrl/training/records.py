"""Taking READY records for training: whole groups, as leases, with their advantages.

A group is the READY Records of one ``(task_id, epoch)`` of the train split (the ledger made it
READY only with score spread; its FAILED members left it). The trainer asks
:meth:`RecordClaimer.claim` for at least ``train_batch_size`` records; with ``consume_order:
fresh`` groups sampled with the newest weights come first (least off-policy), older ones when
nothing fresher is waiting; with ``fifo`` the oldest come first. With ``max_staleness: S`` a
group that a step would train more than ``S`` steps after the weights that sampled it (the
oldest ``created_at_step`` of its waiting records) is dropped first: its untrained records
become ``stale`` (final, never trained) and are counted (:attr:`RecordClaimer.dropped_stale`).

A record is *claimable* while ``trained_count < max_trained_count`` and no live trainer claim
holds it. Claiming one is a single conditional update that sets the claim (owner, step, expiry
``train_claim_ttl_s`` from now) and the advantage; it does **not** count the record as trained.
The use counts (``$inc trained_count``, ``last_trained_step``) only when the step that used it
is published and checkpointed (:meth:`RecordClaimer.commit`); a step that fails gives its
records back (:meth:`RecordClaimer.give_back`), a trainer that dies stops renewing and its
claims lapse, and a trainer resuming from a checkpoint returns every claim made after it
(:meth:`RecordClaimer.return_all`). So nothing is trained more than ``max_trained_count``
times and nothing is dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, Record, RecordStatus, utcnow
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, metric_field, metric_value
from agentrl.training.advantages import group_advantages

log = logging.getLogger(__name__)

_FIELDS = {"task_id": 1, "epoch": 1, "score": 1, "trained_count": 1, "created_at_step": 1,
           "attempt": 1}
_UNCLAIMED = {"train_claim_owner": "", "train_claim_step": 0, "train_claim_expires_ts": 0.0}


@dataclass
class ClaimedGroup:
    """The records of one group taken for a step.

    Attributes:
        task_id: the group's task.
        epoch: the group's epoch.
        scores: the scores of every READY record of the group (the advantage baseline).
        records: the records this trainer claimed, with ``advantage`` set.
    """

    task_id: str
    epoch: int
    scores: list[float]
    records: list[Record] = field(default_factory=list)


@dataclass
class RolloutCounts:
    """Finished train-split records so far (for per-step rollout rates).

    Attributes:
        finished: records READY, ABANDONED or STALE (dropped after they were READY).
        reported: of those, records whose sampler reports ``correct`` (``meta.metrics``).
        correct: of those, reported correct (:data:`~agentrl.rollout.outcomes.CORRECT`).
        well_formed: of those, reported well-formed (an answer in the expected format).
    """

    finished: int = 0
    reported: int = 0
    correct: int = 0
    well_formed: int = 0


class RecordClaimer:
    """Claims READY groups for the trainer and looks up their LLM calls.

    Args:
        config: ``max_trained_count``, ``advantage_std_norm``, ``advantage_leave_one_out``.
        dbs: the connections.
        split: the split trained on.
    """

    def __init__(self, config: AgentTrainingConfig, dbs: Databases, split: str = "train") -> None:
        self.config, self.dbs, self.split = config, dbs, split
        self.records = dbs.store.collection(Record)
        self.owner = f"trainer-{uuid.uuid4().hex[:12]}"
        self.dropped_stale = 0
        """Records this claimer dropped as stale (``max_staleness``), over its life."""

    def _claimable_filter(self) -> dict:
        return {
            "split": self.split,
            "status": RecordStatus.READY.value,
            "trained_count": {"$lt": self.config.max_trained_count},
            "train_claim_expires_ts": {"$lt": time.time()},
        }

    def _claimable(self) -> dict[tuple[str, int], list[dict]]:
        """Claimable READY records grouped by ``(task_id, epoch)``, in ``consume_order``."""
        direction = -1 if self.config.consume_order == "fresh" else 1
        cursor = self.records.find(self._claimable_filter(), _FIELDS).sort(
            [("created_at_step", direction), ("epoch", 1), ("task_id", 1)])
        groups: dict[tuple[str, int], list[dict]] = {}
        for raw in cursor:
            groups.setdefault((raw["task_id"], raw["epoch"]), []).append(raw)
        return groups

    def _group_scores(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], list[float]]:
        """Scores of every READY record of the given groups."""
        keys = set(keys)
        task_ids = sorted({task_id for task_id, _ in keys})
        scores: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
        cursor = self.records.find(
            {"split": self.split, "status": RecordStatus.READY.value, "task_id": {"$in": task_ids}},
            {"task_id": 1, "epoch": 1, "score": 1},
        )
        for raw in cursor:
            key = (raw["task_id"], raw["epoch"])
            if key in scores:
                scores[key].append(float(raw.get("score") or 0.0))
        return scores

    def _claim_record(self, record_id: str, step: int, advantage: float) -> Record | None:
        """Atomically claim one record for ``step``; ``None`` when it is no longer claimable."""
        raw = self.records.find_one_and_update(
            {**self._claimable_filter(), "_id": record_id},
            {"$set": {
                "train_claim_owner": self.owner, "train_claim_step": step,
                "train_claim_expires_ts": time.time() + self.config.train_claim_ttl_s,
                "advantage": advantage, "updated_at": utcnow(),
            }},
            return_document=True,
        )
        return Record.from_mongo(raw) if raw is not None else None

    def _mine(self, **extra: object) -> dict:
        return {"split": self.split, "train_claim_owner": self.owner, **extra}

    def renew(self) -> int:
        """Extend the expiry of every claim this trainer holds (its heartbeat)."""
        result = self.records.update_many(self._mine(), {"$set": {
            "train_claim_expires_ts": time.time() + self.config.train_claim_ttl_s}})
        return int(result.modified_count)

    def commit(self, through_step: int) -> int:
        """Count this trainer's claims for steps ``<= through_step`` as trained (the steps are
        published and checkpointed). Returns how many records."""
        claimed = list(self.records.find(
            self._mine(train_claim_step={"$lte": through_step}),
            {"train_claim_step": 1}))
        for step in sorted({int(r["train_claim_step"]) for r in claimed}):
            self.records.update_many(
                self._mine(train_claim_step=step),
                {"$inc": {"trained_count": 1},
                 "$set": {**_UNCLAIMED, "last_trained_step": step, "updated_at": utcnow()}})
        return len(claimed)

    def give_back(self, records: Iterable[Record]) -> int:
        """Return claims of a step that was not taken (it failed or was abandoned)."""
        ids = [r.id for r in records]
        if not ids:
            return 0
        result = self.records.update_many(
            self._mine(_id={"$in": ids}), {"$set": {**_UNCLAIMED, "updated_at": utcnow()}})
        return int(result.modified_count)

    def return_all(self) -> int:
        """Return every trainer claim of the split (any owner): a trainer that starts from a
        checkpoint gives back what steps after it had claimed. Returns how many."""
        result = self.records.update_many(
            {"split": self.split, "train_claim_owner": {"$ne": ""}},
            {"$set": {**_UNCLAIMED, "updated_at": utcnow()}})
        return int(result.modified_count)

    def drop_stale(self, step: int) -> int:
        """Mark ``stale`` the untrained claimable records of every group that ``step`` would
        train more than ``max_staleness`` steps after its oldest waiting record was sampled
        (``step - 1 - created_at_step > max_staleness``). No-op without ``max_staleness``.

        Returns:
            The records dropped (also added to :attr:`dropped_stale`).
        """
        bound = self.config.max_staleness
        if bound is None:
            return 0
        oldest_allowed = step - 1 - bound
        if oldest_allowed <= 0:
            return 0
        untrained = {**self._claimable_filter(), "trained_count": 0}
        task_ids = self.records.distinct(
            "task_id", {**untrained, "created_at_step": {"$lt": oldest_allowed}})
        if not task_ids:
            return 0
        result = self.records.update_many(
            {**untrained, "task_id": {"$in": sorted(task_ids)}},
            {"$set": {"status": RecordStatus.STALE.value, "updated_at": utcnow()}})
        dropped = int(result.modified_count)
        if dropped:
            log.info("dropped %d stale records of %d groups (step %d, max_staleness %d)",
                     dropped, len(task_ids), step, bound)
        self.dropped_stale += dropped
        return dropped

    def claim(self, step: int, min_records: int) -> list[ClaimedGroup]:
        """Claim whole groups, freshest first, until at least ``min_records`` records are taken.

        Args:
            step: the global step the batch will produce (``train_claim_step``, and
                ``last_trained_step`` once committed).
            min_records: records wanted; fewer are claimed only when fewer are claimable.

        Returns:
            The claimed groups (possibly fewer records than asked; empty when none is READY).
        """
        self.drop_stale(step)
        candidates = self._claimable()
        if not candidates:
            return []
        all_scores = self._group_scores(candidates)
        claimed: list[ClaimedGroup] = []
        total = 0
        for (task_id, epoch), raws in candidates.items():
            if total >= min_records:
                break
            scores = all_scores[(task_id, epoch)]
            advantages = group_advantages(
                scores, self.config.advantage_std_norm, self.config.advantage_leave_one_out
            )
            if advantages is None:
                continue
            by_score = _advantage_by_score(scores, advantages)
            group = ClaimedGroup(task_id=task_id, epoch=epoch, scores=scores)
            for raw in raws:
                record = self._claim_record(
                    raw["_id"], step, by_score[float(raw.get("score") or 0.0)]
                )
                if record is not None:
                    group.records.append(record)
            if group.records:
                claimed.append(group)
                total += len(group.records)
        return claimed

    def calls_of(self, records: list[Record]) -> dict[str, list[DispatchedSamplingTask]]:
        """The LLM calls of ``records``' own attempts (one query), by record id, in turn order.

        Calls of other attempts (a copy that lost its lease, an attempt that failed) are never
        trained.
        """
        calls: dict[str, list[DispatchedSamplingTask]] = {r.id: [] for r in records}
        attempts = {r.id: r.attempt for r in records}
        for call in self.dbs.store.find(
            DispatchedSamplingTask, {"record_id": {"$in": list(calls)}}
        ):
            if call.attempt == attempts[call.record_id]:
                calls[call.record_id].append(call)
        for value in calls.values():
            value.sort(key=lambda c: c.turn)
        return calls

    def rollout_counts(self) -> RolloutCounts:
        """Counts of finished records of the split, from the metrics their samplers report.

        One query, so the four counts are of one moment: counted separately, a group that
        becomes READY between two counts would be in one and not the other (and a step's
        rates could exceed 1).
        """
        finished = {
            "split": self.split,
            "status": {"$in": [RecordStatus.READY.value, RecordStatus.ABANDONED.value,
                               RecordStatus.STALE.value]},
        }
        counts = RolloutCounts()
        projection = {metric_field(CORRECT): 1, metric_field(WELL_FORMED): 1}
        for raw in self.records.find(finished, projection):
            counts.finished += 1
            correct = metric_value(raw, CORRECT)
            if correct is not None:
                counts.reported += 1
                counts.correct += bool(correct)
                counts.well_formed += bool(metric_value(raw, WELL_FORMED))
        return counts

    def status_counts(self) -> dict[str, int]:
        """Records of the split per status (for 'why is training waiting' messages)."""
        return {
            status.value: self.records.count_documents(
                {"split": self.split, "status": status.value}
            )
            for status in RecordStatus
        }


def _advantage_by_score(scores: list[float], advantages: list[float]) -> dict[float, float]:
    """Map score → advantage (equal scores have equal advantages in a group)."""
    return {float(s): float(a) for s, a in zip(scores, advantages, strict=True)}
