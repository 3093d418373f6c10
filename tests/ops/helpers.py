"""Helpers of the operations tests: subprocesses (Celery worker, Flower, the CPU engine) started
in their own process group with the test's ``AGENTRL_*`` environment, and polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment (``AGENTRL_*`` from the config fixture) plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def start(argv: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """Start ``argv`` (``python -m`` style, run from the repo root) in a new session."""
    return subprocess.Popen(
        [sys.executable, *argv], cwd=REPO, env=child_env(**extra), stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )


def start_celery(kind: str, log: Path, *args: str, **extra: str) -> subprocess.Popen:
    """``celery -A agentrl <kind> ARGS`` as a subprocess (see :func:`start`)."""
    return start(["-m", "celery", "-A", "agentrl", kind, *args], log, **extra)


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group of ``proc`` (one we started), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.3) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s`` seconds."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
