"""The end-of-run report: ``runs/<name>/summary.json`` and ``runs/<name>/reward.png``.

``summary.json`` describes the whole run, over every invocation of ``agentrl run`` that worked on
it (a resumed run adds to it): ``invocations`` lists each one (start time, wall time, the global
steps it started and ended at, whether it finished or was interrupted) and ``wall_time_s`` is
their total.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from agentrl.databases import Databases, DispatchedSamplingTask, Record, RecordStatus  # noqa: E402
from agentrl.rollout.ledger import GlobalStep
from agentrl.training import metrics as M  # noqa: E402


@dataclass
class Invocation:
    """One invocation of ``agentrl run`` on a run.

    Attributes:
        started_at: when it started (ISO 8601, UTC).
        wall_time_s: its wall time in seconds.
        start_step: the global step it started at (a resumed checkpoint's step, or 0).
        end_step: the global step it ended at.
        outcome: ``finished`` or ``interrupted``.
    """

    started_at: str
    wall_time_s: float
    start_step: int
    end_step: int
    outcome: Literal["finished", "interrupted"] = "finished"


def previous_invocations(run_dir: Path) -> list[dict[str, Any]]:
    """The ``invocations`` of an existing ``summary.json`` (a summary written before they were
    kept counts as one invocation with its wall time); ``[]`` when there is none."""
    try:
        old = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    if isinstance(old.get("invocations"), list):
        return list(old["invocations"])
    if "wall_time_s" in old:
        return [{"started_at": None, "wall_time_s": old["wall_time_s"], "start_step": None,
                 "end_step": old.get("global_step"), "outcome": "finished"}]
    return []


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def records_per_status(dbs: Databases, split: str = "train") -> dict[str, int]:
    """Records of ``split`` per status."""
    coll = dbs.store.collection(Record)
    return {
        s.value: coll.count_documents({"split": split, "status": s.value}) for s in RecordStatus
    }


def tokens_sampled(dbs: Databases) -> int:
    """Completion tokens sampled by every LLM call of the run."""
    total = 0
    for raw in dbs.store.collection(DispatchedSamplingTask).find({}, {"completion_token_ids": 1}):
        total += len(raw.get("completion_token_ids") or [])
    return total


def write_summary(
    run_dir: Path,
    steps: list[dict[str, Any]],
    dbs: Databases,
    invocation: Invocation,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write ``summary.json``: steps, per-step reward and rates, records, tokens, wall time.

    Per step: ``reward_per_step`` (mean score of the trained records), ``correct_rate_per_step``
    and ``well_formed_rate_per_step`` over the records that finished sampling since the previous
    step (``null`` when none did), ``batch_*`` rates over the trained records, and the mean and
    max staleness (steps) of the trained tokens; ``stale_dropped_records`` counts the records
    dropped untrained by ``max_staleness``.

    Args:
        run_dir: ``runs/<name>``.
        steps: the per-step metrics (from the metrics JSONL), in step order.
        dbs: connections (record and dispatch counts).
        invocation: this invocation, appended to the ``invocations`` of an earlier summary;
            ``wall_time_s`` is the total over all of them.
        evaluation: the held-out evaluation (``eval``: ``before``, ``after``, ``per_step``,
            each point with ``count``, ``accuracy``, ``well_formed_rate``, ``mean_reward``;
            :func:`agentrl.driver.evals.eval_summary`), omitted when ``None``.

    Returns:
        The path of ``summary.json``.
    """
    summary = {
        "steps": len(steps),
        "global_step": GlobalStep(dbs).get(),
        "reward_per_step": [_finite(s.get(M.REWARD_MEAN)) for s in steps],
        "correct_rate_per_step": [_finite(s.get(M.ROLLOUT_CORRECT_RATE)) for s in steps],
        "well_formed_rate_per_step": [_finite(s.get(M.ROLLOUT_WELL_FORMED_RATE)) for s in steps],
        "batch_correct_rate_per_step": [_finite(s.get(M.REWARD_CORRECT_RATE)) for s in steps],
        "batch_well_formed_rate_per_step": [
            _finite(s.get(M.REWARD_WELL_FORMED_RATE)) for s in steps
        ],
        "clip_fraction_per_step": [_finite(s.get(M.CLIP_REGION)) for s in steps],
        "staleness_per_step": [_finite(s.get(M.STALENESS_MEAN)) for s in steps],
        "staleness_max_per_step": [_finite(s.get(M.STALENESS_MAX)) for s in steps],
        "max_staleness": dbs.config.max_staleness,
        "stale_dropped_records": int(sum(_finite(s.get(M.STALENESS_DROPPED)) or 0 for s in steps)),
        "records_per_status": records_per_status(dbs),
        "tokens_sampled": tokens_sampled(dbs),
    }
    if evaluation is not None:
        summary["eval"] = evaluation
    invocations = [*previous_invocations(run_dir), asdict(invocation)]
    invocations[-1]["wall_time_s"] = round(invocation.wall_time_s, 1)
    summary["invocations"] = invocations
    summary["wall_time_s"] = round(sum(float(i["wall_time_s"] or 0) for i in invocations), 1)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def plot_rewards(
    run_dir: Path, steps: list[dict[str, Any]], eval_points: list[dict[str, Any]] | None = None
) -> Path:
    """Write ``reward.png``: reward, clip fraction and staleness per step (three panels), and
    with ``eval_points`` a fourth: the held-out accuracy and well-formed rate per step (sampled
    and greedy).

    Returns:
        The path of ``reward.png``.
    """
    x = [int(s["step"]) for s in steps]
    panels = (
        (M.REWARD_MEAN, "reward (mean)"),
        (M.CLIP_REGION, "clip fraction"),
        (M.STALENESS_MEAN, "staleness (steps)"),
    )
    rows = len(panels) + (1 if eval_points else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.4 * rows), sharex=True)
    for ax, (name, label) in zip(axes, panels, strict=False):
        y = [_finite(s.get(name)) for s in steps]
        ax.plot(x, [v if v is not None else math.nan for v in y], marker="o")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if eval_points:
        _plot_eval(axes[-1], eval_points)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = run_dir / "reward.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_eval(ax: Any, points: list[dict[str, Any]]) -> None:
    """The held-out curves: accuracy and well-formed rate per step, sampled and greedy."""
    ordered = sorted(points, key=lambda p: int(p["step"]))
    x = [int(p["step"]) for p in ordered]
    for part, style in (("sampled", "-"), ("greedy", "--")):
        rows = [p if part == "sampled" else p.get("greedy") for p in ordered]
        if not any(rows):
            continue
        for key, label in (("accuracy", "accuracy"), ("well_formed_rate", "well-formed")):
            y = [_finite((r or {}).get(key)) for r in rows]
            ax.plot(x, [math.nan if v is None else v for v in y], style, marker="s",
                    label=f"{label} ({part})")
    ax.set_ylabel("held-out eval")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
