"""Training metrics: their names (defined once), their reduction, and where they go.

Names are slash groups (TRL style): ``reward/…``, ``rollout/…``, ``loss/…``, ``clip_ratio/…``,
``staleness/…``, ``perf/…``, ``optim/…``. Per-micro-batch values are reduced in one place,
:func:`reduce_metrics` (a NaN-aware weighted mean); each step's reduced values go to a JSONL file
(one object per line, with ``step`` and ``time``; the source of truth), to a rich progress bar and
to the experiment trackers of ``report_to`` (:mod:`agentrl.training.trackers`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentrl.logs import console
from agentrl.training.trackers.base import Tracker

log = logging.getLogger(__name__)

REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_CORRECT_RATE = "reward/correct_rate"
REWARD_WELL_FORMED_RATE = "reward/well_formed_rate"
ROLLOUT_CORRECT_RATE = "rollout/correct_rate"
ROLLOUT_WELL_FORMED_RATE = "rollout/well_formed_rate"
ROLLOUT_FINISHED = "rollout/finished"
ROLLOUT_GROUPS_WITH_SPREAD = "rollout/groups_with_spread"
LOSS_POLICY = "loss/policy"
ADVANTAGE_ABS_MEAN = "advantage/abs_mean"
CLIP_LOW = "clip_ratio/low_mean"
CLIP_HIGH = "clip_ratio/high_mean"
CLIP_REGION = "clip_ratio/region_mean"
CLIP_CAPPED = "clip_ratio/capped_mean"
CLIP_OUT_OF_WINDOW = "clip_ratio/out_of_window_mean"
POLICY_RATIO = "policy/ratio_mean"
POLICY_LOG_RATIO_CLAMPED = "policy/log_ratio_clamped_mean"
POLICY_BEHAVIOUR_KL = "policy/behaviour_kl_mean"
KL_REF_MEAN = "kl/ref_mean"
"""Mean k3 estimate of KL(policy || reference) over trained tokens (``kl_coef`` > 0)."""
STALENESS_MEAN = "staleness/mean"
STALENESS_MAX = "staleness/max"
STALENESS_DROPPED = "staleness/dropped_records"
"""Records dropped untrained as stale (``max_staleness``) since the previous step."""
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_STEP_TIME_S = "perf/step_time_s"
PERF_TOKENS = "perf/tokens"
PERF_TRAINED_TOKENS = "perf/trained_tokens"
OPTIM_GRAD_NORM = "optim/grad_norm"
OPTIM_LR = "optim/lr"
TRAIN_RECORDS = "train/records"
TRAIN_GROUPS = "train/groups"
TRAIN_SEQUENCES = "train/sequences"
TRAIN_SKIPPED_RECORDS = "train/skipped_records"
TRAIN_SKIPPED_MICRO_BATCHES = "train/skipped_micro_batches"
TRAIN_TOKEN_EXACT_RATE = "train/token_exact_rate"
OPTIM_STEP_APPLIED = "optim/step_applied"
PERF_WEIGHT_SYNC_S = "perf/weight_sync_s"
"""Seconds from the end of the optimizer step until every service serves the new weights
(gathering the shards, writing the step's weights, every DP group's engine loading them)."""
TRAIN_RANKS = "train/ranks"
"""Trainer ranks (data-parallel processes) that took the step."""

SHOWN_IN_PROGRESS = {
    "reward": REWARD_MEAN,
    "loss": LOSS_POLICY,
    "clip": CLIP_REGION,
    "staleness": STALENESS_MEAN,
    "tok/s": PERF_TOKENS_PER_S,
}
"""The metrics the progress bar shows after each step, by the label it shows them with."""


def progress_fields(metrics: Mapping[str, float]) -> str:
    """``reward 0.35  loss -0.012  clip 0.02  staleness 1.5  tok/s 120`` (``-`` for NaN)."""
    parts = []
    for label, name in SHOWN_IN_PROGRESS.items():
        value = metrics.get(name, math.nan)
        shown = "-" if not math.isfinite(value) else f"{value:.3g}"
        parts.append(f"{label} {shown}")
    return "  ".join(parts)


def reduce_metrics(
    values: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None
) -> dict[str, float]:
    """Reduce per-micro-batch metrics to one value per name: a NaN-aware weighted mean.

    Args:
        values: one mapping per micro-batch.
        weights: one weight per mapping (e.g. its trained-token count); ``None``: equal.

    Returns:
        name → mean over the mappings that have a finite value for it (NaN when none has).
    """
    weights = list(weights) if weights is not None else [1.0] * len(values)
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for mapping, weight in zip(values, weights, strict=True):
        for name, value in mapping.items():
            sums.setdefault(name, 0.0)
            totals.setdefault(name, 0.0)
            if value is not None and math.isfinite(value) and weight > 0:
                sums[name] += value * weight
                totals[name] += weight
    return {n: (sums[n] / totals[n] if totals[n] > 0 else math.nan) for n in sums}


def _jsonable(value: float) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


class MetricsLogger:
    """Writes each step's metrics to a JSONL file, advances a progress bar and passes the finite
    metrics on to experiment trackers.

    Args:
        path: the JSONL file (appended to, so a resumed run continues it).
        total_steps: steps expected (``None``: unknown).
        show_progress: show progress: the rich bar on a terminal; where the console is not
            one (output sent to a file or a pipe, where a bar shows only its last state), a
            plain line per step instead.
        trackers: open experiment trackers; closed by :meth:`close`. A tracker that fails to
            log is reported once and dropped: the JSONL file is the record of the run.
        start_step: steps already done (a resumed run's bar starts there).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: Path,
        total_steps: int | None = None,
        show_progress: bool = True,
        trackers: Sequence[Tracker] = (),
        start_step: int = 0,
    ) -> None:
        self.path = Path(path)
        self.trackers = list(trackers)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self.console = console
        self._progress: Progress | None = None
        self._task_id = None
        self._total = total_steps
        self._lines = show_progress and not self.console.is_terminal
        waiting = "waiting for READY records"
        if start_step:
            waiting = f"resumed at step {start_step}; {waiting}"
        if self._lines:
            self.console.print(f"train: {waiting}", highlight=False)
        elif show_progress:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(
                waiting, total=total_steps, completed=start_step
            )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one step: a JSONL line ``{"step", "time", <metrics>}`` (non-finite values as
        ``null``), the finite values to each tracker, and a progress tick."""
        values = {k: _jsonable(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._file.flush()
        self._to_trackers(step, {k: v for k, v in values.items() if v is not None})
        if self._progress is not None and self._task_id is not None:
            self._progress.update(
                self._task_id, completed=step, description=progress_fields(metrics)
            )
        elif self._lines:
            of = f"/{self._total}" if self._total else ""
            self.console.print(f"train step {step}{of}  {progress_fields(metrics)}",
                               highlight=False)

    def _to_trackers(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log to every tracker; drop (and close) one that raises."""
        for tracker in list(self.trackers):
            try:
                tracker.log(step, metrics)
            except Exception:  # noqa: BLE001 - a tracker must not stop training
                log.exception("tracker %s failed to log step %d; it is dropped", tracker.name, step)
                self.trackers.remove(tracker)
                self._close_tracker(tracker)

    @staticmethod
    def _close_tracker(tracker: Tracker) -> None:
        try:
            tracker.close()
        except Exception:  # noqa: BLE001 - closing the others and the file matters more
            log.exception("tracker %s failed to close", tracker.name)

    def note(self, message: str) -> None:
        """Print a status line above the bar (e.g. why training is waiting)."""
        self.console.print(message)

    def close(self) -> None:
        """Stop the bar, close the trackers and the file."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for tracker in self.trackers:
            self._close_tracker(tracker)
        self.trackers = []
        self._file.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The step records of a metrics JSONL file, in order (the last one per step wins)."""
    by_step: dict[int, dict[str, float]] = {}
    if not Path(path).exists():
        return []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]
