"""Child processes of ``agentrl run``: the sampling worker, beat and, when needed, Redis.

Each child runs in its own session (process group), writes to ``runs/<name>/logs/<role>.log``,
and is stopped with SIGTERM to its group, then SIGKILL after a grace period. A child that exits
while the job runs is reported by :meth:`ChildProcess.check` with its log tail.

:class:`ChildLogWatcher` tails those log files while the job runs and brings their WARNING and
ERROR entries (dataset errors, skipped lines, failed jobs, tracebacks) to the main console: each
kind once when it first appears, then its count when it repeats, and a summary at the end.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        log.info("started %s (pid %d), log %s", role, self.process.pid, self.log_file)
        log.debug("%s command: %s", role, " ".join(self.command))

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


# --- watching the children's logs ----------------------------------------------------------------

CELERY_ENTRY = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+: (?P<level>[A-Z]+)/[^\]]*\] (?P<text>.*)$")
"""The first line of a Celery log entry: ``[2026-01-01 10:00:00,123: ERROR/MainProcess] text``."""

REPORTED_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                       r"|\b[0-9a-f]{12,}\b|\d+(?:\.\d+)?")
"""What varies between entries of one kind: ids, counts, line numbers, durations."""
WATCH_INTERVAL_S = 1.0
"""Seconds between looks at the log files."""
REPEAT_REPORT_S = 60.0
"""A kind that keeps repeating is reported again (with its count) at most this often."""
MAX_TEXT = 400
"""Characters of an entry shown on the console."""
MAX_KINDS_SHOWN = 20
"""Kinds reported one by one; further new kinds are only counted (and named at the end)."""


@dataclass
class LogKind:
    """One kind of WARNING/ERROR entry of one child.

    Attributes:
        role: the child (``worker``, ``beat``).
        level: ``WARNING``, ``ERROR`` or ``CRITICAL``.
        text: the first entry's text (with its exception line).
        count: entries of this kind so far (entries whose text differs only in numbers and ids).
        reported: ``count`` when it was last reported.
        reported_at: ``time.monotonic()`` of that report.
    """

    role: str
    level: str
    text: str
    count: int = 0
    reported: int = 0
    reported_at: float = 0.0


def entry_text(lines: list[str]) -> str:
    """The text of a log entry: its first line plus, after a traceback, the exception line.

    Args:
        lines: the entry's text lines (the first without the Celery prefix).
    """
    text = lines[0].strip()
    tail = [line.strip() for line in lines[1:] if line.strip()]
    if tail and any(line.startswith("Traceback") for line in lines):
        text = f"{text} -> {tail[-1]}" if text and not text.startswith("Traceback") else tail[-1]
    return text[:MAX_TEXT]


def kind_key(text: str) -> str:
    """``text`` with what varies between entries of one kind (ids, numbers) masked."""
    return _VOLATILE.sub("#", text)


class ChildLogWatcher:
    """Follows the children's log files and reports their WARNING/ERROR entries by kind.

    A new kind (entries that differ only in numbers and ids are one kind) is logged at once
    (WARNING or ERROR, naming the child and its log file), up to :data:`MAX_KINDS_SHOWN` kinds;
    a kind that repeats is logged again with its count at most every ``repeat_every_s`` seconds;
    :meth:`stop` logs the counts not reported yet. A raw ``Traceback`` outside a Celery entry (a
    crash) counts as an ERROR entry.

    Args:
        children: the children whose ``log_file`` is followed.
        repeat_every_s: seconds between reports of a repeating kind.
    """

    def __init__(
        self, children: Sequence[ChildProcess], repeat_every_s: float = REPEAT_REPORT_S
    ) -> None:
        self.children = list(children)
        self.repeat_every_s = repeat_every_s
        self.kinds: dict[tuple[str, str, str], LogKind] = {}
        self._offsets = {c.role: 0 for c in self.children}
        self._partial = {c.role: "" for c in self.children}
        self._open: dict[str, tuple[str, list[str]] | None] = {c.role: None for c in self.children}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Read what the children wrote since the last call and report new or repeated kinds."""
        for child in self.children:
            self._read(child)
        now = time.monotonic()
        for shown, kind in enumerate(self.kinds.values()):
            if kind.reported == 0 and shown < MAX_KINDS_SHOWN:
                self._report(kind, now, first=True)
            elif 0 < kind.reported < kind.count and now - kind.reported_at >= self.repeat_every_s:
                self._report(kind, now, first=False)

    def _read(self, child: ChildProcess) -> None:
        role = child.role
        try:
            with child.log_file.open("rb") as handle:
                handle.seek(self._offsets[role])
                data = handle.read()
        except OSError:
            return
        self._offsets[role] += len(data)
        text = self._partial[role] + data.decode("utf-8", errors="replace")
        *lines, self._partial[role] = text.split("\n")
        for line in lines:
            self._line(role, line)
        if not data:  # nothing new: an entry left open (a traceback) is complete
            self._close(role)

    def _line(self, role: str, line: str) -> None:
        match = CELERY_ENTRY.match(line)
        if match is not None:
            self._close(role)
            self._open[role] = (match["level"], [match["text"]])
        elif line.startswith("Traceback") and (
            self._open[role] is None or self._open[role][0] not in REPORTED_LEVELS
        ):  # a raw traceback (a crash) after an INFO entry or none
            self._close(role)
            self._open[role] = ("ERROR", [line])
        elif self._open[role] is not None:
            self._open[role][1].append(line)

    def _close(self, role: str) -> None:
        entry, self._open[role] = self._open[role], None
        if entry is None or entry[0] not in REPORTED_LEVELS:
            return
        level, text = entry[0], entry_text(entry[1])
        kind = self.kinds.setdefault((role, level, kind_key(text)), LogKind(role, level, text))
        kind.count += 1

    def _report(self, kind: LogKind, now: float, first: bool) -> None:
        log_file = next(c.log_file for c in self.children if c.role == kind.role)
        level = logging.ERROR if kind.level in ("ERROR", "CRITICAL") else logging.WARNING
        if first:
            log.log(level, "%s %s: %s (%s)", kind.role, kind.level, kind.text, log_file)
        else:
            log.log(level, "%s %s x%d (+%d): %s", kind.role, kind.level, kind.count,
                    kind.count - kind.reported, kind.text)
        kind.reported, kind.reported_at = kind.count, now

    def _run(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - watching must never end the run
                log.exception("watching the child logs failed")

    def start(self) -> ChildLogWatcher:
        """Poll in a daemon thread every :data:`WATCH_INTERVAL_S` seconds."""
        self._thread = threading.Thread(target=self._run, name="child-log-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, read the files a last time, and report every count not reported yet."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for child in self.children:
            self._read(child)
            self._close(child.role)
        unshown = 0
        for shown, kind in enumerate(self.kinds.values()):
            if shown >= MAX_KINDS_SHOWN and kind.reported == 0:
                unshown += 1
            elif kind.count > kind.reported:
                self._report(kind, time.monotonic(), first=kind.reported == 0)
        if unshown:
            log.warning("%d more kinds of WARNING/ERROR entries in %s", unshown,
                        ", ".join(str(c.log_file) for c in self.children))
