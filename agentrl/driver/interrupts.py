"""Ctrl-C and SIGTERM during a run: the first one asks the trainer to stop after its step, a
second one abandons the step.

:class:`StopOnSignal` is a context manager installing handlers for SIGINT and SIGTERM in the
main thread. Until a stop callback is attached (the trainer does not exist yet: databases, engine
and children are starting), a signal raises :class:`KeyboardInterrupt` at once, as Python's
default does. Once :meth:`StopOnSignal.attach` names a callback (``Trainer.request_stop``), the
first signal calls it and says so on the console; the trainer finishes the step in progress, and
the driver checkpoints it. A second signal raises :class:`KeyboardInterrupt` (the step is
abandoned; the newest resumable checkpoint on disk is where a rerun starts). The previous
handlers are restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from agentrl.configs import AgentTrainingConfig
from agentrl.logs import console

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

INTERRUPTED_EXIT_CODE = 130
"""Exit status of a command stopped by a signal (128 + SIGINT), as shells report Ctrl-C."""


class StopOnSignal:
    """SIGINT/SIGTERM handling of a driver (see the module docstring).

    Attributes:
        requested: the name of the first signal received after :meth:`attach` (``None``: none).
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._on_stop: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def attach(self, on_stop: Callable[[], None]) -> None:
        """From now on the first signal calls ``on_stop`` instead of interrupting."""
        self._on_stop = on_stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._on_stop is None or self.requested is not None:
            raise KeyboardInterrupt(name)
        self.requested = name
        self._on_stop()
        log.warning("%s: stopping after the current step (send it again to abandon the step)",
                    name)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def say_interrupted(config: AgentTrainingConfig, step: int | None) -> None:
    """Print where an interrupted run stands and how to resume it.

    Args:
        config: the run's configuration (where its checkpoints are).
        step: the step it stopped at after finishing it (``None``: interrupted harder, at
            start or by a second signal; the newest checkpoint on disk is named).
    """
    from agentrl.training.checkpoint import checkpoint_root, latest_checkpoint  # torch

    resumable = latest_checkpoint(checkpoint_root(config))
    if step is not None:
        console.print(
            f"[bold yellow]interrupted at step {step}[/] — rerun the same command to resume"
        )
        return
    where = f"from {resumable}" if resumable is not None else "from the start"
    console.print(f"[bold yellow]interrupted[/] — rerun the same command to resume ({where})")

