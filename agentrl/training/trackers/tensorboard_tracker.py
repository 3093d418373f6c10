"""TensorBoard: event files under ``runs/<name>/tensorboard`` (torch's ``SummaryWriter``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from agentrl.training.trackers.base import HParam, Tracker


class TensorBoardTracker(Tracker):
    """Writes each metric as a scalar (tag = metric name, step = optimizer step) and the run's
    configuration to the HParams plugin, in one event file per process start."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, hparams: Mapping[str, HParam]) -> None:
        super().__init__(run_dir, run_name, hparams)
        self.log_dir = self.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for summary in hparams_summaries(dict(hparams), {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Add one scalar per metric at ``step`` and flush the event file."""
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()
