"""Held-out evaluation of ``agentrl run``: ``eval_file`` sampled with the current weights before
the first step, every ``eval_every_steps`` and after the last step.

Each evaluation sends :func:`agentrl.evaluation.evaluate` jobs to the ``evaluation`` queue (the
run's own worker samples them): up to ``max_eval_tasks`` tasks of ``eval_file`` after the first
``eval_skip_tasks``, once at the sampling ``temperature`` and, with ``eval_greedy``, once at
temperature 0. Their records are of the ``eval`` split, so they never feed training (the trainer
claims only ``train`` records). Every point is appended to ``runs/<name>/eval.jsonl``, so a
resumed run keeps the points of its earlier invocations; :func:`eval_summary` turns them into
the ``eval`` section of ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import ConfigError
from agentrl.evaluation import evaluate

log = logging.getLogger(__name__)

EVAL_FILE = "eval.jsonl"
"""The held-out evaluation points of a run, one JSON object a line (in ``runs/<name>``)."""
POLL_S = 2.0
"""Seconds between looks at the evaluation jobs (children are checked in between)."""
FIELDS = ("count", "accuracy", "well_formed_rate", "mean_reward", "failures")
"""The numbers of one evaluation point (and of its ``greedy`` part)."""


def check_held_out(config: AgentTrainingConfig) -> None:
    """Refuse an ``eval_file`` whose evaluated tasks are tasks the run trains on.

    Raises:
        ConfigError: ``eval_file`` is ``train_file`` and ``eval_skip_tasks`` does not skip the
            ``max_train_tasks`` trained ones (or every task is trained: ``max_train_tasks`` 0).
    """
    if (
        not config.eval_file
        or Path(config.eval_file).resolve() != Path(config.train_file).resolve()
    ):
        return
    if not config.max_train_tasks or config.eval_skip_tasks < config.max_train_tasks:
        raise ConfigError(
            "eval_skip_tasks",
            config.eval_skip_tasks,
            f"eval_file is train_file, so the evaluated tasks would be trained on: set "
            f"eval_skip_tasks >= max_train_tasks ({config.max_train_tasks or 'all'}) or use a "
            "held-out file",
        )


def _point(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one :func:`~agentrl.evaluation.summarize_evaluation` result."""
    return {
        "count": summary.get("count", 0),
        "accuracy": summary.get("accuracy"),
        "well_formed_rate": summary.get("well_formed_rate"),
        "mean_reward": summary.get("mean_score"),
        "failures": summary.get("failures", 0),
    }


class HeldOutEval:
    """Evaluates ``eval_file`` for the main job and keeps the points in ``eval.jsonl``.

    Args:
        config: ``eval_file``, ``eval_skip_tasks``, ``max_eval_tasks``, ``eval_every_steps``,
            ``eval_greedy``, ``eval_timeout_s``, ``temperature``, ``sampler``.
        app: the run's Celery app (the jobs go to its ``evaluation`` queue).
        run_dir: ``runs/<name>`` (``eval.jsonl`` goes there).
        check: called while waiting (raises when a child process died).
    """

    def __init__(
        self,
        config: AgentTrainingConfig,
        app: Celery,
        run_dir: Path,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.config, self.app, self.check = config, app, check
        self.path = run_dir / EVAL_FILE

    @property
    def enabled(self) -> bool:
        """Whether an ``eval_file`` is configured."""
        return bool(self.config.eval_file)

    def due(self, step: int) -> bool:
        """Whether ``eval_every_steps`` asks for an evaluation after ``step`` (the last step's
        evaluation is the run's ``after`` one, made by the driver)."""
        every = self.config.eval_every_steps
        last = self.config.max_steps
        return self.enabled and bool(every) and step % every == 0 and step != last

    def run_once(self, step: int) -> None:
        """:meth:`run` for ``step`` unless disabled or ``eval.jsonl`` already holds its point
        (a resumed run evaluated it before)."""
        if self.enabled and step not in {int(p["step"]) for p in read_points(self.path.parent)}:
            self.run(step)

    def run(self, step: int) -> dict[str, Any] | None:
        """Evaluate the weights of ``step`` and append the point to ``eval.jsonl``.

        Returns:
            ``{"step", "temperature", "count", "accuracy", "well_formed_rate", "mean_reward",
            "failures", "elapsed_s", "greedy": {...}}`` (``greedy`` with the same numbers, or
            ``None`` without ``eval_greedy``); ``None`` when the jobs did not finish within
            ``eval_timeout_s`` (logged).
        """
        config = self.config
        started = time.monotonic()
        temperatures: list[float | None] = [config.temperature]
        if config.eval_greedy:
            temperatures.append(0.0)
        log.info(
            "held-out evaluation of step %d: up to %d problems at temperature %s "
            "(training waits for it)",
            step, config.max_eval_tasks, " and ".join(str(t) for t in temperatures),
        )
        jobs = [
            evaluate(
                config.sampler,
                config.eval_file,
                split="eval",
                limit=config.max_eval_tasks,
                offset=config.eval_skip_tasks,
                temperature=t,
                max_wait_s=config.eval_timeout_s,
                config=config,
                app=self.app,
            )
            for t in temperatures
        ]
        results = []
        deadline = time.monotonic() + config.eval_timeout_s + 60.0
        try:
            for job in jobs:
                results.append(self._wait(job, deadline))
        except CeleryTimeoutError:
            log.warning(
                "held-out evaluation at step %d did not finish in %.0f s",
                step,
                config.eval_timeout_s,
            )
            return None
        point: dict[str, Any] = {
            "step": step,
            "temperature": config.temperature,
            **_point(results[0]),
        }
        point["greedy"] = _point(results[1]) if len(results) > 1 else None
        point["elapsed_s"] = round(time.monotonic() - started, 1)
        with self.path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        log.info("held-out eval at step %d: %s", step, describe_point(point))
        return point

    def _wait(self, job: Any, deadline: float) -> dict[str, Any]:
        while True:
            self.check()
            try:
                return dict(job.get(timeout=POLL_S))
            except CeleryTimeoutError:
                if time.monotonic() > deadline:
                    raise


def read_points(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation points of ``runs/<name>/eval.jsonl`` in order (``[]`` when none)."""
    path = run_dir / EVAL_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_summary(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``eval`` section of ``summary.json``: ``before`` (the earliest step's point),
    ``after`` (the latest) and ``per_step`` (every point); ``None`` without points."""
    if not points:
        return None
    ordered = sorted(points, key=lambda p: int(p["step"]))
    return {"before": ordered[0], "after": ordered[-1], "per_step": points}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def describe_point(point: dict[str, Any]) -> str:
    """``accuracy 1.6%  well-formed 34.4%  reward 0.08 (64 tasks)`` (+ the greedy numbers)."""

    def one(p: dict[str, Any]) -> str:
        reward = "-" if p.get("mean_reward") is None else f"{p['mean_reward']:.3f}"
        return (
            f"accuracy {_pct(p.get('accuracy'))}  well-formed "
            f"{_pct(p.get('well_formed_rate'))}  reward {reward} ({p.get('count', 0)} tasks)"
        )

    text = one(point)
    if point.get("greedy"):
        text += f"; greedy: {one(point['greedy'])}"
    return text


def describe_change(section: dict[str, Any]) -> list[str]:
    """The console lines ``held-out eval step 0 → 8: accuracy a → b, well-formed c → d, ...``
    for the sampled and the greedy evaluations."""
    before, after = section["before"], section["after"]
    lines = []
    for label, b, a in (
        (f"T={before.get('temperature')}", before, after),
        ("greedy", before.get("greedy"), after.get("greedy")),
    ):
        if not b or not a:
            continue
        reward = [
            ("-" if p.get("mean_reward") is None else f"{p['mean_reward']:.3f}") for p in (b, a)
        ]
        lines.append(
            f"held-out eval ({label}, {a.get('count', 0)} tasks) step {before['step']} → "
            f"{after['step']}: accuracy {_pct(b.get('accuracy'))} → {_pct(a.get('accuracy'))}, "
            f"well-formed {_pct(b.get('well_formed_rate'))} → "
            f"{_pct(a.get('well_formed_rate'))}, reward {reward[0]} → {reward[1]}"
        )
    return lines
