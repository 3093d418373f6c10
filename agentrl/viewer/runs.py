"""What a run left on disk: ``runs/<name>/metrics.jsonl`` (one line per optimizer step) and
``runs/<name>/summary.json`` (written at the end of ``agentrl run``), read for the viewer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agentrl.training import metrics as M
from agentrl.training.metrics import read_metrics

STEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("reward", M.REWARD_MEAN),
    ("correct", M.ROLLOUT_CORRECT_RATE),
    ("well-formed", M.ROLLOUT_WELL_FORMED_RATE),
    ("loss", M.LOSS_POLICY),
    ("clip", M.CLIP_REGION),
    ("staleness mean", M.STALENESS_MEAN),
    ("staleness max", M.STALENESS_MAX),
    ("records", M.TRAIN_RECORDS),
    ("tokens/s", M.PERF_TOKENS_PER_S),
)
"""(column title, metric name) of the steps table."""

EVAL_FIELDS = ("count", "accuracy", "well_formed_rate", "mean_reward")
"""Fields of one held-out evaluation in ``summary.json``'s ``eval`` section."""


def list_runs(output_dir: Path) -> list[str]:
    """Names of the runs under ``output_dir``: directories holding metrics.jsonl or summary.json.

    Returns:
        Sorted run names (empty when ``output_dir`` does not exist).
    """
    if not output_dir.is_dir():
        return []
    return sorted(
        d.name for d in output_dir.iterdir()
        if d.is_dir() and ((d / "metrics.jsonl").exists() or (d / "summary.json").exists())
    )


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or ``None`` when absent or unreadable."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_steps(run_dir: Path) -> list[dict[str, Any]]:
    """One row per optimizer step: ``step`` and the :data:`STEP_COLUMNS` values (``None`` when
    not logged), from metrics.jsonl."""
    return [
        {"step": int(line["step"]), **{name: _finite(line.get(name)) for _, name in STEP_COLUMNS}}
        for line in read_metrics(run_dir / "metrics.jsonl")
    ]


def run_eval(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The held-out evaluations of ``summary.json``'s ``eval`` section as table rows: ``when``
    (``before``, ``during``, ``after``), ``step`` and :data:`EVAL_FIELDS` (``None`` when absent).

    Returns:
        Rows in time order; empty when the run has no ``eval`` section.
    """
    section = (summary or {}).get("eval")
    if not isinstance(section, dict):
        return []
    points = [p for p in section.get("per_step") or [] if isinstance(p, dict)]
    if not points:  # a summary with only the two ends
        points = [p for p in (section.get("before"), section.get("after")) if isinstance(p, dict)]
    points.sort(key=lambda p: int(p.get("step") or 0))
    last = len(points) - 1  # per_step holds every point, the first and the last included
    entries = [("before" if i == 0 else "after" if i == last else "during", p)
               for i, p in enumerate(points)]
    return [{"when": when, **{k: raw.get(k) for k in ("step", *EVAL_FIELDS)}}
            for when, raw in entries if isinstance(raw, dict)]
