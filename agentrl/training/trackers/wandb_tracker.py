"""Weights & Biases: an offline run under ``runs/<name>/wandb`` unless ``WANDB_MODE`` says
otherwise (``wandb sync`` uploads it later)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import wandb

from agentrl.training.trackers.base import HParam, Tracker


class WandbTracker(Tracker):
    """A wandb run (project = run name) with the configuration as its config; each step's
    metrics are one history row at that step. Console capture and system stats are off: the
    metrics are the run's record, the console stays the trainer's."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, hparams: Mapping[str, HParam]) -> None:
        super().__init__(run_dir, run_name, hparams)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", run_name),
            name=run_name,
            dir=str(self.run_dir),
            config=dict(hparams),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """One history row at ``step``."""
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        """Finish the run (writes the run file's last records)."""
        self.run.finish()
