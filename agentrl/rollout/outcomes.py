"""Per-record metrics a sampler reports, and the rates the trainer reads from them.

A sampler puts numbers about its trajectory in ``record.meta["metrics"]`` (:data:`METRICS_KEY`),
usually in ``evaluate_record``, since the Record is written after it. Two keys have a meaning
the trainer relies on (its ``reward/correct_rate``, ``reward/well_formed_rate`` and the
``rollout/...`` rates):

- ``correct`` (:data:`CORRECT`): the trajectory reached a right answer (``True``/``False``);
- ``well_formed`` (:data:`WELL_FORMED`): it gave an answer in the expected format, right or not.

A record whose sampler reports neither counts in no rate (a rate over no reporting record is
NaN). Other keys (``turns``, ``tool_calls``...) are the sampler's own and documented there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from agentrl.databases import Record

METRICS_KEY = "metrics"
"""Key of the metrics mapping in ``Record.meta``."""

CORRECT = "correct"
"""Metric: the answer is right (bool)."""

WELL_FORMED = "well_formed"
"""Metric: an answer in the expected format was given (bool)."""


def report_metrics(record: Record, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into ``record.meta["metrics"]``.

    Returns:
        The record's metrics mapping after the merge.
    """
    metrics = record.meta.setdefault(METRICS_KEY, {})
    metrics.update(values)
    return metrics


def metric_field(key: str) -> str:
    """The MongoDB field path of a record metric (``meta.metrics.<key>``)."""
    return f"meta.{METRICS_KEY}.{key}"


def metric_value(raw: dict[str, Any], key: str) -> Any:
    """The value of metric ``key`` in a raw record document found with a projection on
    :func:`metric_field` (``None`` when not reported).

    MongoDB returns a projected dotted field nested (``{"meta": {"metrics": {...}}}``);
    nx-27017 returns it under its dotted name; both are read.
    """
    dotted = metric_field(key)
    if dotted in raw:
        return raw[dotted]
    return ((raw.get("meta") or {}).get(METRICS_KEY) or {}).get(key)


def outcome_rates(records: Iterable[Record]) -> dict[str, float]:
    """The share of records reporting ``correct`` / ``well_formed`` that report them true.

    Args:
        records: finished records.

    Returns:
        ``{CORRECT: rate, WELL_FORMED: rate}``, each in [0, 1], NaN when no record reports it.
    """
    counts = {CORRECT: [0, 0], WELL_FORMED: [0, 0]}
    for record in records:
        metrics = record.meta.get(METRICS_KEY) or {}
        for key, count in counts.items():
            if key in metrics:
                count[0] += bool(metrics[key])
                count[1] += 1
    return {key: hits / n if n else math.nan for key, (hits, n) in counts.items()}
