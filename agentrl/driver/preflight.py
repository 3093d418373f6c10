"""Checks ``agentrl run`` makes before it starts anything: the sampler resolves and its datasets
load.

Beat loads the configured sampler's dataset of each split (``get_sampler(config.sampler)
.load_dataset(config, split)``) in its own process, where an error is only a line in
``beat.log``, repeated at every push. The driver loads the same datasets first, so a broken file
fails the run at once with its file, line and reason (a :class:`~agentrl.errors.DatasetError`,
exit status 2), and lines skipped under ``skip_bad_lines`` are reported on the console.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import agentrl.rollout.math  # noqa: F401 - registers the built-in "math" sampler, as workers do
import agentrl.rollout.osworld  # noqa: F401 - registers "osworld"
from agentrl.configs import AgentTrainingConfig
from agentrl.errors import ConfigError, DatasetError
from agentrl.rollout.registry import get_sampler

log = logging.getLogger(__name__)

SKIPPED_SHOWN = 3
"""Skipped dataset lines named on the console (the rest are counted)."""


def import_sampler_modules(config: AgentTrainingConfig) -> None:
    """Import the modules of ``sampler_modules`` (names from configuration), as workers do.

    Raises:
        ConfigError: a module cannot be imported (the import error is the reason).
    """
    for name in (m.strip() for m in config.sampler_modules.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError("sampler_modules", name, f"cannot import it: {exc}") from exc


def check_datasets(config: AgentTrainingConfig) -> dict[str, Any]:
    """Load the configured sampler's train (and, with ``eval_file``, eval) dataset.

    Args:
        config: the run configuration.

    Returns:
        split → the loaded dataset.

    Raises:
        UnknownSamplerError: ``sampler`` names no registered sampler.
        DatasetError: a file cannot be read, a line is bad (``skip_bad_lines: false``), or no
            usable task is left.
    """
    import_sampler_modules(config)
    sampler = get_sampler(config.sampler)
    splits = {"train": config.train_file}
    if config.eval_file:
        splits["eval"] = config.eval_file
    loaded = {}
    for split, path in splits.items():
        dataset = sampler.load_dataset(config, split)
        skipped = list(getattr(dataset, "errors", []) or [])
        if skipped:
            shown = "; ".join(str(e) for e in skipped[:SKIPPED_SHOWN])
            rest = len(skipped) - SKIPPED_SHOWN
            more = f" and {rest} more" if rest > 0 else ""
            log.warning("%s dataset: skipped %d bad line(s) (skip_bad_lines): %s%s",
                        split, len(skipped), shown, more)
        if hasattr(dataset, "__len__") and len(dataset) == 0:
            reason = f"no usable task ({len(skipped)} bad line(s) skipped)" if skipped else (
                "no task in the file")
            raise DatasetError(str(path), None, reason)
        loaded[split] = dataset
    return loaded
