"""The rates the trainer reads from the metrics samplers report per record."""

from __future__ import annotations

import math

from agentrl.databases import Record
from agentrl.rollout.outcomes import CORRECT, WELL_FORMED, outcome_rates, report_metrics


def _record(i: int, **metrics: object) -> Record:
    record = Record(_id=f"t:{i}:0", task_id="t", traj_id=i, epoch=0)
    if metrics:
        report_metrics(record, **metrics)
    return record


def test_rates_count_only_records_that_report() -> None:
    records = [_record(0, correct=True, well_formed=True, turns=3),
               _record(1, correct=False, well_formed=True), _record(2, correct=False,
                                                                     well_formed=False),
               _record(3)]  # a sampler that reports nothing counts in no rate
    assert outcome_rates(records) == {CORRECT: 1 / 3, WELL_FORMED: 2 / 3}
    assert records[0].meta["metrics"] == {"correct": True, "well_formed": True, "turns": 3}
    rates = outcome_rates([_record(4)])
    assert math.isnan(rates[CORRECT]) and math.isnan(rates[WELL_FORMED])
