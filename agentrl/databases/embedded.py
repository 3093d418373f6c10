"""The embedded MongoDB-wire server: nx-27017 on a data directory, started on demand.

When ``db_connection_string`` is empty, :func:`ensure_embedded_mongo` starts ``nx-27017`` as a
daemon on a loopback port over ``embedded_db_dir`` and writes ``server.json`` (port, pid) in
that directory. Another process (or a later run) finds that file, pings the server and reuses it;
data survives restarts because it lives in SQLite files in the directory. A server that stopped
is started again on the port kept in ``server.json`` (a free one only when that port is taken),
so running processes, whose clients keep the old URI, reconnect by themselves. A file lock
serializes concurrent starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from agentrl.errors import ServiceUnavailableError

STATE_FILE = "server.json"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(uri: str, timeout_s: float = 1.0) -> bool:
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=int(timeout_s * 1000))
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _uri(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kept_port(data_dir: Path) -> int | None:
    """The port recorded in ``data_dir/server.json`` by the last start, if any."""
    try:
        return int(json.loads((Path(data_dir) / STATE_FILE).read_text())["port"])
    except (ValueError, KeyError, OSError, TypeError):
        return None


def running_embedded_uri(data_dir: Path) -> str | None:
    """The URI of the embedded server on ``data_dir`` if one is running and answers, else None."""
    port = kept_port(data_dir)
    if port is None:
        return None
    uri = _uri(port)
    return uri if _ping(uri) else None


def _executable() -> list[str]:
    exe = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
    if Path(exe).exists():
        return [exe]
    return [sys.executable, "-m", "nx_27017"]


def ensure_embedded_mongo(data_dir: str | Path) -> str:
    """Start (or reuse) the embedded MongoDB-wire server on ``data_dir``.

    Args:
        data_dir: directory holding the SQLite data files, ``server.json`` and the server log.

    Returns:
        The server's ``mongodb://127.0.0.1:PORT/`` URI.

    Raises:
        ServiceUnavailableError: the server did not answer within 30 s (the log path is named).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "start.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        uri = running_embedded_uri(data_dir)
        if uri:
            return uri
        port = kept_port(data_dir)
        if port is None or not _port_is_free(port):
            port = _free_port()
        log = data_dir / "server.log"
        cmd = [
            *_executable(),
            "--data-dir",
            str(data_dir / "data"),
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
            "--log-file",
            str(log),
            "--pid-file",
            str(data_dir / "server.pid"),
            "-d",
        ]
        (data_dir / "data").mkdir(exist_ok=True)
        # the daemon outlives this process: it gets no stdin of ours (a terminal, a pipe)
        subprocess.run(cmd, check=False, capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=START_TIMEOUT_S)
        uri = _uri(port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _ping(uri, 0.5):
                pid = (
                    (data_dir / "server.pid").read_text().strip()
                    if (data_dir / "server.pid").exists()
                    else ""
                )
                (data_dir / STATE_FILE).write_text(json.dumps({"port": port, "pid": pid}))
                return uri
            time.sleep(0.2)
        raise ServiceUnavailableError(uri, f"the embedded nx-27017 server did not start; see {log}")


def stop_embedded_mongo(data_dir: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server on ``data_dir`` (SIGTERM, then SIGKILL after ``timeout_s``).

    ``server.json`` keeps the port, so the next :func:`ensure_embedded_mongo` starts the server
    where running clients look for it.

    Returns:
        Whether a running server was stopped.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    pid_file = data_dir / "server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
