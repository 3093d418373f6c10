"""Where log records go in a command's process: everything to the run's log file, little to the
console.

The console (stderr) is shared with the trainer's progress bar (:data:`console`), so lines
printed while the bar is drawn appear above it instead of tearing it. :func:`setup_logging`
sends every record of level INFO and up (DEBUG and up from agentrl) to
``runs/<name>/logs/<file>``; on the console it shows the INFO narrative of the driver, the
trainer and the engine manager, WARNING and up from the rest of agentrl, and only
ERROR and up from libraries (httpx, transformers, urllib3, celery...). Transformers' and
huggingface_hub's own stderr handler and progress bars are turned off, so their output also goes
to the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.utils
import transformers.utils.logging
from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)
"""The one console (stderr) of a command: log lines, notes and the progress bar."""

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

NARRATIVE_LOGGERS = ("agentrl.driver", "agentrl.training.trainer", "agentrl.inference.manager")
"""Loggers whose INFO records the console shows (what the command is doing)."""


class ConsoleFilter(logging.Filter):
    """Passes agentrl's WARNING+, the narrative loggers' INFO+ and everyone's ERROR+."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        name = record.name
        if any(name == n or name.startswith(n + ".") for n in NARRATIVE_LOGGERS):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING and (name == "agentrl" or
                                                      name.startswith("agentrl."))


def setup_logging(log_file: Path | None = None) -> None:
    """Route logging for a command: all to ``log_file``, a filtered view to :data:`console`.

    Replaces the root logger's handlers (a second call moves the file). Safe to call before the
    run directory is known (``log_file=None``: console only, until a later call adds the file).

    Args:
        log_file: the run's log file (its directory is created), e.g.
            ``runs/<name>/logs/run.log``.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    logging.getLogger("agentrl").setLevel(logging.DEBUG)
    shown = RichHandler(console=console, show_time=False, show_path=False)
    shown.addFilter(ConsoleFilter())
    root.addHandler(shown)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        written = logging.FileHandler(log_file, encoding="utf-8")
        written.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(written)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
