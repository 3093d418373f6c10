"""MLflow: a run in the tracking store named by ``MLFLOW_TRACKING_URI``, by default a local
SQLite store ``runs/<name>/mlflow.db`` (no server; ``mlflow ui --backend-store-uri`` shows it)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from agentrl.training.trackers.base import HParam, Tracker

MAX_PARAM_CHARS = 6000
"""Longest parameter value MLflow stores (longer JSON values are cut to this many characters)."""


class MlflowTracker(Tracker):
    """An MLflow run in experiment ``<name>``, the configuration as its params, each step's
    metrics as one batch at that step."""

    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, hparams: Mapping[str, HParam]) -> None:
        super().__init__(run_dir, run_name, hparams)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = os.environ.get(
            "MLFLOW_TRACKING_URI", f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
        )
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(run_name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(run_name)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in hparams.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """One batch of metrics at ``step``, timestamped now (milliseconds)."""
        now_ms = int(time.time() * 1000)
        batch = [Metric(name, float(value), now_ms, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        """Mark the run finished."""
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))
