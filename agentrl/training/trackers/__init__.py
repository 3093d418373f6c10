"""Experiment trackers: every metric the trainer logs also goes to the trackers ``report_to``
names, through each tracker's own library; ``metrics.jsonl`` stays the source of truth.

- ``tensorboard``: torch's ``SummaryWriter``, event files in ``runs/<name>/tensorboard``;
- ``wandb``: an offline run in ``runs/<name>/wandb`` (``WANDB_MODE`` overrides the mode);
- ``mlflow``: a run in ``MLFLOW_TRACKING_URI``, by default the SQLite file
  ``runs/<name>/mlflow.db``;
- ``swanlab``: an offline run in ``runs/<name>/swanlog`` (``SWANLAB_MODE`` overrides the mode).

Each tracker lives in its own module that imports its library at the top; a module is imported
only when ``report_to`` names it, so the libraries stay optional (``pip install
'agentrl[trackers]'``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from agentrl.configs import AgentTrainingConfig, TrackerName
from agentrl.errors import TrackerUnavailableError
from agentrl.training.trackers.base import HParam, Tracker, config_hparams

__all__ = ["HParam", "Tracker", "config_hparams", "open_trackers", "tracker_class"]

_TRACKERS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("agentrl.training.trackers.tensorboard_tracker", "TensorBoardTracker",
                    "tensorboard"),
    "wandb": ("agentrl.training.trackers.wandb_tracker", "WandbTracker", "wandb"),
    "mlflow": ("agentrl.training.trackers.mlflow_tracker", "MlflowTracker", "mlflow-skinny"),
    "swanlab": ("agentrl.training.trackers.swanlab_tracker", "SwanLabTracker", "swanlab"),
}
"""name → (module, class, the PyPI package whose library it needs)."""


def tracker_class(name: TrackerName) -> type[Tracker]:
    """The tracker class ``report_to`` calls ``name``.

    Raises:
        TrackerUnavailableError: its library is not installed.
        KeyError: ``name`` is no tracker (the config's ``Literal`` prevents it).
    """
    module_name, class_name, package = _TRACKERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrackerUnavailableError(name, package) from exc
    return getattr(module, class_name)


def open_trackers(config: AgentTrainingConfig) -> list[Tracker]:
    """Open the trackers of ``config.report_to`` for the run ``<output_dir>/<name>``, each with
    the run's configuration as hyper-parameters (:func:`config_hparams`).

    Returns:
        The open trackers, in ``report_to`` order (empty when it names none).

    Raises:
        TrackerUnavailableError: a named tracker's library is not installed (trackers opened
            before it are closed again).
    """
    run_dir = Path(config.output_dir) / config.name
    hparams = config_hparams(config) if config.report_to else {}
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(config.report_to):
            opened.append(tracker_class(name)(run_dir, config.name, hparams))
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    return opened
