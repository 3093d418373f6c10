"""The embedded MongoDB-wire server starts, is reused by a second process, and keeps its data
across a restart on the same port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pymongo import MongoClient

from agentrl.databases.embedded import (
    ensure_embedded_mongo,
    running_embedded_uri,
    stop_embedded_mongo,
)

_SECOND_PROCESS = (
    "import sys; from agentrl.databases.embedded import ensure_embedded_mongo; "
    "print(ensure_embedded_mongo(sys.argv[1]))"
)


def test_start_reuse_restart_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "mongo"
    try:
        uri = ensure_embedded_mongo(data_dir)
        client: MongoClient = MongoClient(uri)
        client.agentrl.tasks.insert_one({"_id": "kept", "question": "2+2"})
        client.close()

        other = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert other.stdout.strip() == uri  # reused, not a second server

        assert stop_embedded_mongo(data_dir)
        assert running_embedded_uri(data_dir) is None

        uri_again = ensure_embedded_mongo(data_dir)
        assert uri_again == uri  # same port: running clients reconnect by themselves
        client = MongoClient(uri_again)
        assert client.agentrl.tasks.find_one({"_id": "kept"})["question"] == "2+2"
        client.close()
    finally:
        stop_embedded_mongo(data_dir)


def test_the_server_does_not_hold_the_terminal(tmp_path: Path) -> None:
    """The daemon outlives the command that started it: it must not keep that command's
    standard input (a terminal, a pipe) open."""
    data_dir = tmp_path / "mongo"
    try:
        subprocess.run([sys.executable, "-c", _SECOND_PROCESS, str(data_dir)],
                       stdin=subprocess.PIPE, capture_output=True, timeout=60, check=True)
        pid = json.loads((data_dir / "server.json").read_text())["pid"]
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    finally:
        stop_embedded_mongo(data_dir)
