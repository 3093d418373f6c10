"""Shared fixtures: real Redis (a database of our own), the embedded MongoDB-wire server, a moto
S3 server, and a per-test configuration that isolates keys and databases.

Every test session claims a free Redis database (1..15) with a marker key, so concurrent test
runs on one machine never share queues or keys; it flushes only that database at the end.

A SIGTERM to pytest (``timeout``, a CI runner giving up) is turned into KeyboardInterrupt, so
the running test's ``finally`` blocks and the fixtures still stop the workers, engines and
servers they started (each in its own session, which a signal to pytest does not reach).
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import redis

from agentrl.configs import AgentTrainingConfig, load_config
from agentrl.databases import Databases, init_databases
from agentrl.databases.embedded import ensure_embedded_mongo, stop_embedded_mongo

REDIS_HOST = os.environ.get("AGENTRL_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("AGENTRL_TEST_REDIS_PORT", "6379"))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The project's real input (../shared/data), read in place."""

_MARKER = "agentrl:test:claimed"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"pytest got signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://host:port/N`` of a Redis database this session owns (empty when claimed)."""
    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0 and client.set(_MARKER, token, nx=True, ex=6 * 3600):
            break
        client.close()
    else:
        pytest.fail("no empty Redis database 1..15 is free for this test session")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        if client.get(_MARKER) == token.encode():
            client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of an embedded nx-27017 server started for this session on a temporary directory."""
    data_dir = tmp_path_factory.mktemp("mongo")
    uri = ensure_embedded_mongo(data_dir)
    yield uri
    stop_embedded_mongo(data_dir)


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """An ``s3://`` connection string to a moto S3 server (HTTP) with a fresh bucket name."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"s3://testing:testing@127.0.0.1:{port}/agentrl-{uuid.uuid4().hex[:8]}"
    server.stop()


@pytest.fixture
def config(
    redis_url: str, mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AgentTrainingConfig:
    """A configuration isolated to this test: own MongoDB database, Redis key prefix, object dir.

    Its values are also exported as ``AGENTRL_*`` environment variables, so subprocesses started
    by the test (Celery workers, engines) see the same configuration.
    """
    suffix = uuid.uuid4().hex[:10]
    values = {
        "redis_url": redis_url,
        "db_connection_string": mongo_uri,
        "db_name": f"test_{suffix}",
        "key_prefix": f"t{suffix}",
        "object_store_dir": str(tmp_path / "objects"),
        "output_dir": str(tmp_path / "runs"),
    }
    monkeypatch.delenv("AGENTRL_CONFIG", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(f"AGENTRL_{key.upper()}", value)
    return load_config(**values)


@pytest.fixture
def dbs(config: AgentTrainingConfig) -> Iterator[Databases]:
    """Connections for ``config``; the test's MongoDB database is dropped afterwards."""
    databases = init_databases(config)
    yield databases
    databases.store.client.drop_database(config.db_name)
    databases.close()
