"""Child processes of ``agentrl run``: the sampling worker, beat and, when needed, Redis.

Each child runs in its own session (process group), writes to ``runs/<name>/logs/<role>.log``,
and is stopped with SIGTERM to its group, then SIGKILL after a grace period. A child that exits
while the job runs is reported by :meth:`ChildProcess.check` with its log tail.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import redis

from agentrl.configs import AgentTrainingConfig
from agentrl.errors import ChildProcessFailedError, ServiceUnavailableError

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
"""Seconds a child gets to exit after SIGTERM before SIGKILL."""

REDIS_START_TIMEOUT_S = 10.0


class ChildProcess:
    """One child process with its log file.

    Args:
        role: its name in messages (``worker``, ``beat``, ``redis``).
        command: the argv.
        log_file: where stdout and stderr go.
        env: the environment (default: this process's).
    """

    def __init__(
        self,
        role: str,
        command: Sequence[str],
        log_file: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.role, self.command, self.log_file = role, list(command), Path(log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        log.info("started %s (pid %d): %s", role, self.process.pid, " ".join(self.command))

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if the child has exited.

        Raises:
            ChildProcessFailedError: it is no longer running (with its status and log tail).
        """
        code = self.process.poll()
        if code is not None:
            raise ChildProcessFailedError(self.role, code, str(self.log_file), self.log_tail())

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the child's process group, then SIGKILL it after ``grace_s`` seconds."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        log.info("stopped %s (pid %d)", self.role, self.process.pid)


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A agentrl <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "agentrl", *args]


def start_worker(name: str, log_dir: Path, env: Mapping[str, str]) -> ChildProcess:
    """A sampling worker consuming the ``sampling`` and ``evaluation`` queues."""
    return ChildProcess(
        "worker",
        celery_command("worker", "-Q", "sampling,evaluation", "--loglevel", "INFO",
                       "-n", f"{name}-sampling@%h"),
        log_dir / "worker.log",
        env,
    )


def start_beat(log_dir: Path, env: Mapping[str, str]) -> ChildProcess:
    """Celery beat (epoch pushes and housekeeping)."""
    return ChildProcess(
        "beat",
        celery_command("beat", "--loglevel", "INFO", "-s", str(log_dir / "celerybeat-schedule")),
        log_dir / "beat.log",
        env,
    )


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_redis(config: AgentTrainingConfig, log_dir: Path) -> ChildProcess | None:
    """Start a local ``redis-server`` when the configured local Redis does not answer.

    Returns:
        The started child, or ``None`` when Redis already answers.

    Raises:
        ServiceUnavailableError: Redis is remote, or ``redis-server`` is not installed, or it
            did not come up.
    """
    url = config.redis_url
    if redis_answers(url):
        return None
    parsed = urlparse(url)
    binary = shutil.which("redis-server")
    if parsed.hostname not in ("127.0.0.1", "localhost") or binary is None:
        raise ServiceUnavailableError(
            url, "Redis does not answer; install redis-server or set AGENTRL_REDIS_URL"
        )
    child = ChildProcess(
        "redis",
        [binary, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        log_dir / "redis.log",
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if redis_answers(url):
            return child
        time.sleep(0.2)
    child.stop()
    raise ServiceUnavailableError(url, f"redis-server did not start:\n{child.log_tail()}")
