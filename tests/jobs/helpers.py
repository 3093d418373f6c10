"""Helpers of the job-system tests: Celery worker and beat subprocesses, waiting on MongoDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MODULE = "tests.jobs.rft_example"


def celery_env(**extra: str) -> dict[str, str]:
    """The test's environment (AGENTRL_* set by the config fixture) plus ``extra``."""
    env = dict(os.environ)
    env["AGENTRL_SAMPLER_MODULES"] = EXAMPLE_MODULE
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def start_celery(kind: str, log: Path, *args: str, **extra: str) -> subprocess.Popen:
    """``celery -A agentrl <kind> ...`` as a subprocess in its own process group."""
    cmd = [sys.executable, "-m", "celery", "-A", "agentrl", kind, "--loglevel", "INFO", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=celery_env(**extra), stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Stop a subprocess we started (its whole process group), escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def process_alive(pid: int) -> bool:
    """Whether a process of that pid exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.2) -> float:
    """Poll ``predicate`` until true; returns seconds waited. Fails the test on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
