"""Taking READY records for training: whole groups, atomically, with their advantages.

A group is the READY Records of one ``(task_id, epoch)`` of the train split. The trainer asks
:meth:`RecordClaimer.claim` for at least ``train_batch_size`` records; groups sampled with the
newest weights come first (least off-policy), older ones when nothing fresher is waiting.
A record is *claimable* while ``trained_count < max_trained_count``; claiming one is a single
conditional update (``$inc trained_count``, ``$set last_trained_step, advantage``) that only
matches while it is still claimable, so two trainers never take the same use of a record.
Groups whose scores have no spread carry no GRPO signal: they are set to ``abandoned``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, DispatchedSamplingTask, Record, RecordStatus, utcnow
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, metric_field
from agentrl.training.advantages import group_advantages, has_spread

log = logging.getLogger(__name__)

_FIELDS = {"task_id": 1, "epoch": 1, "score": 1, "trained_count": 1, "created_at_step": 1}


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
        finished: records READY or ABANDONED.
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

    def _claimable(self) -> dict[tuple[str, int], list[dict]]:
        """Claimable READY records grouped by ``(task_id, epoch)``, freshest group first."""
        cursor = self.records.find(
            {
                "split": self.split,
                "status": RecordStatus.READY.value,
                "trained_count": {"$lt": self.config.max_trained_count},
            },
            _FIELDS,
        ).sort([("created_at_step", -1), ("task_id", 1), ("epoch", 1)])
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

    def abandon(self, task_id: str, epoch: int) -> int:
        """Set a no-spread group's READY records to ``abandoned``. Returns how many changed."""
        result = self.records.update_many(
            {"task_id": task_id, "epoch": epoch, "status": RecordStatus.READY.value},
            {"$set": {"status": RecordStatus.ABANDONED.value, "updated_at": utcnow()}},
        )
        return int(result.modified_count)

    def _claim_record(self, record_id: str, step: int, advantage: float) -> Record | None:
        """Atomically take one use of a record; ``None`` when it is no longer claimable."""
        raw = self.records.find_one_and_update(
            {
                "_id": record_id,
                "status": RecordStatus.READY.value,
                "trained_count": {"$lt": self.config.max_trained_count},
            },
            {
                "$inc": {"trained_count": 1},
                "$set": {"last_trained_step": step, "advantage": advantage, "updated_at": utcnow()},
            },
            return_document=True,
        )
        return Record.from_mongo(raw) if raw is not None else None

    def claim(self, step: int, min_records: int) -> list[ClaimedGroup]:
        """Claim whole groups, freshest first, until at least ``min_records`` records are taken.

        Args:
            step: the global step the batch will produce (stored as ``last_trained_step``).
            min_records: records wanted; fewer are claimed only when fewer are claimable.

        Returns:
            The claimed groups (possibly fewer records than asked; empty when none is READY).
        """
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
            if not has_spread(scores):
                n = self.abandon(task_id, epoch)
                log.info("group %s/%d has no score spread: %d records abandoned", task_id, epoch, n)
                continue
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
        """The LLM calls of ``records`` (one query), by record id, in turn order."""
        calls: dict[str, list[DispatchedSamplingTask]] = {r.id: [] for r in records}
        for call in self.dbs.store.find(
            DispatchedSamplingTask, {"record_id": {"$in": list(calls)}}
        ):
            calls[call.record_id].append(call)
        for value in calls.values():
            value.sort(key=lambda c: c.turn)
        return calls

    def rollout_counts(self) -> RolloutCounts:
        """Counts of finished records of the split, from the metrics their samplers report
        (4 count queries)."""
        finished = {
            "split": self.split,
            "status": {"$in": [RecordStatus.READY.value, RecordStatus.ABANDONED.value]},
        }
        return RolloutCounts(
            finished=self.records.count_documents(finished),
            reported=self.records.count_documents(
                {**finished, metric_field(CORRECT): {"$exists": True}}),
            correct=self.records.count_documents({**finished, metric_field(CORRECT): True}),
            well_formed=self.records.count_documents(
                {**finished, metric_field(WELL_FORMED): True}),
        )

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
