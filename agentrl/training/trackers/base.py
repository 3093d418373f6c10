"""The experiment-tracker interface and the run's hyper-parameters as trackers take them."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from agentrl.configs import AgentTrainingConfig
from agentrl.databases.store import redact_url

HParam = str | int | float | bool
"""A hyper-parameter value every tracker can store."""


def config_hparams(config: AgentTrainingConfig) -> dict[str, HParam]:
    """The run's configuration as flat hyper-parameters, with no secrets.

    Every field becomes one entry; lists and mappings become JSON text, paths text. URLs lose
    their ``user:password@`` part and ``external_services`` its API keys.

    Returns:
        field name → value.
    """
    values = config.model_dump(mode="json")
    values["external_services"] = [
        {k: v for k, v in service.items() if k != "api_key"}
        for service in values["external_services"]
    ]
    flat: dict[str, HParam] = {}
    for key, value in values.items():
        if isinstance(value, str):
            flat[key] = redact_url(value)
        elif isinstance(value, bool | int | float):
            flat[key] = value
        else:
            flat[key] = json.dumps(value)
    return flat


class Tracker(ABC):
    """One experiment tracker: gets the run's hyper-parameters when opened, then each step's
    metrics, through the tracker's own library.

    Args:
        run_dir: ``<output_dir>/<name>``; local tracker files go below it.
        run_name: the run's name (``config.name``), used as project and run name.
        hparams: the run's hyper-parameters (:func:`config_hparams`).

    Class attributes:
        name: the name ``report_to`` uses.
    """

    name: ClassVar[str] = ""

    def __init__(self, run_dir: Path, run_name: str, hparams: Mapping[str, HParam]) -> None:
        self.run_dir, self.run_name = Path(run_dir), run_name

    @abstractmethod
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record the finite metrics of optimizer step ``step`` (names as in metrics.jsonl)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and finish the run."""

