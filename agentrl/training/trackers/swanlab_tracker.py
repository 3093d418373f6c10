"""SwanLab: an offline run under ``runs/<name>/swanlog`` unless ``SWANLAB_MODE`` says otherwise
(``swanlab sync`` uploads it later)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import swanlab

from agentrl.training.trackers.base import HParam, Tracker


class SwanLabTracker(Tracker):
    """A SwanLab run (project = run name) with the configuration as its config; each step's
    metrics are logged at that step. Terminal capture and hardware monitoring are off."""

    name = "swanlab"

    def __init__(self, run_dir: Path, run_name: str, hparams: Mapping[str, HParam]) -> None:
        super().__init__(run_dir, run_name, hparams)
        self.log_dir = self.run_dir / "swanlog"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        settings = swanlab.Settings(terminal={"proxy_type": "none"}, probe={"monitor": False})
        self.run = swanlab.init(
            project=run_name,
            name=run_name,
            config=dict(hparams),
            mode=os.environ.get("SWANLAB_MODE", "offline"),  # type: ignore[arg-type]
            log_dir=str(self.log_dir),
            settings=settings,
            reinit=True,
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics at ``step``."""
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        """Finish the run."""
        self.run.finish()
