"""The console side of training: the progress bar's labels and resumed start, and the report of
a slow weight push."""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path

import pytest
from rich.console import Console

from agentrl.databases import Databases
from agentrl.training import metrics as M
from agentrl.training import weights
from agentrl.training.metrics import MetricsLogger, progress_fields
from agentrl.training.weights import ManagerWeightPublisher

STEP = {M.REWARD_MEAN: 0.5, M.LOSS_POLICY: -0.01234, M.CLIP_REGION: 0.0,
        M.STALENESS_MEAN: 1.5, M.PERF_TOKENS_PER_S: 120.4}


def test_bar_fields_have_readable_labels_and_a_resumed_bar_starts_at_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(M, "console", Console(file=io.StringIO(), force_terminal=True))
    assert progress_fields(STEP) == "reward 0.5  loss -0.0123  clip 0  staleness 1.5  tok/s 120"
    assert progress_fields({**STEP, M.CLIP_REGION: math.nan}).split("  ")[2] == "clip -"
    logger = MetricsLogger(tmp_path / "metrics.jsonl", total_steps=8, start_step=4)
    try:
        (task,) = logger._progress.tasks
        assert (task.completed, task.total) == (4, 8)
        assert "resumed at step 4" in task.description
        logger.log(5, STEP)
        assert task.completed == 5 and task.description == progress_fields(STEP)
    finally:
        logger.close()


def test_output_that_is_not_a_terminal_gets_a_line_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()  # a file or a pipe: a live bar would show only its last state
    monkeypatch.setattr(M, "console", Console(file=out, width=200))
    with MetricsLogger(tmp_path / "metrics.jsonl", total_steps=8, start_step=4) as logger:
        assert logger._progress is None
        logger.log(5, STEP)
        logger.log(6, {**STEP, M.REWARD_MEAN: 0.75})
    assert out.getvalue().splitlines() == [
        "train: resumed at step 4; waiting for READY records",
        f"train step 5/8  {progress_fields(STEP)}",
        f"train step 6/8  {progress_fields({**STEP, M.REWARD_MEAN: 0.75})}",
    ]


class LoadingManager:
    """An InferenceManager's ``update_weights`` that takes ``load_s`` seconds."""

    def __init__(self, load_s: float) -> None:
        self.load_s, self.loaded = load_s, []

    def update_weights(self, model_dir: Path, version: int) -> None:
        time.sleep(self.load_s)
        self.loaded.append(version)


def test_a_slow_weight_push_is_reported_with_its_duration(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(weights, "SLOW_PUSH_S", 0.2)
    manager = LoadingManager(0.3)
    with caplog.at_level(logging.INFO, logger="agentrl.training.weights"):
        ManagerWeightPublisher([manager], dbs)(Path("unused"), 3)
        ManagerWeightPublisher([LoadingManager(0.0)], dbs)(Path("unused"), 4)
    slow, fast = caplog.records
    assert manager.loaded == [3]
    assert slow.levelno == logging.WARNING and "weight push v3 to 1 service(s) took" in (
        slow.getMessage())
    took = float(slow.getMessage().split(" took ")[1].split(" s ")[0])
    assert took >= 0.3 and "s loading" in slow.getMessage()
    assert fast.levelno == logging.INFO and "weights v4 pushed" in fast.getMessage()
