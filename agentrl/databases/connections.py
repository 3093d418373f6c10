"""`init_databases(config)`: connect MongoDB, Redis and the object store once per process."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import redis

from agentrl.configs import AgentTrainingConfig
from agentrl.databases.embedded import ensure_embedded_mongo
from agentrl.databases.objectstore import ObjectStore, open_object_store
from agentrl.databases.store import MongoStore, redact_url
from agentrl.errors import ServiceUnavailableError


def connect_redis(url: str) -> redis.Redis:
    """A redis-py client for ``url``, checked with a ping.

    Raises:
        ServiceUnavailableError: Redis does not answer (the message says how to start it).
    """
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailableError(
            redact_url(url),
            "Redis does not answer. Start one with `redis-server --daemonize yes --port 6379` "
            f"or set AGENTRL_REDIS_URL ({exc})",
        ) from exc
    return client


def mongo_uri(config: AgentTrainingConfig) -> str:
    """The MongoDB URI: the configured one, else the embedded server's (started if needed)."""
    return config.db_connection_string or ensure_embedded_mongo(config.embedded_db_dir)


@dataclass
class Databases:
    """The connections of one process; ``with init_databases(config) as dbs:`` closes them.

    Attributes:
        config: the configuration they were opened with.
        store: typed MongoDB access (sync).
        redis: redis-py client (``decode_responses=True``).
        objects: the object store.
        mongo_uri: the MongoDB URI in use (the embedded server's when none was configured).
    """

    config: AgentTrainingConfig
    store: MongoStore
    redis: redis.Redis
    objects: ObjectStore
    mongo_uri: str

    def close(self) -> None:
        """Close the MongoDB and Redis connections."""
        self.store.close()
        self.redis.close()

    def __enter__(self) -> Databases:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def init_databases(config: AgentTrainingConfig) -> Databases:
    """Connect to MongoDB (starting the embedded server when no URI is set), Redis and the object
    store, and create the indexes the queries need (including the unique Record identity).

    Raises:
        ServiceUnavailableError: MongoDB or Redis cannot be reached.
    """
    uri = mongo_uri(config)
    store = MongoStore(uri, config.db_name)
    store.create_indexes()
    return Databases(
        config=config,
        store=store,
        redis=connect_redis(config.redis_url),
        objects=open_object_store(config.oss_connection_string, str(config.object_store_dir)),
        mongo_uri=uri,
    )
