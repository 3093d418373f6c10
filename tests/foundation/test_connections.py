"""init_databases connects everything; unreachable services fail with a fix in the message."""

from __future__ import annotations

import pytest

from agentrl.configs import AgentTrainingConfig
from agentrl.databases import Databases, Record, connect_redis
from agentrl.databases.store import MongoStore
from agentrl.errors import ServiceUnavailableError
from agentrl.rollout.ledger import GlobalStep
from tests.conftest import free_port


def test_init_databases_creates_the_identity_index(dbs: Databases) -> None:
    indexes = dbs.store.collection(Record).index_information().values()
    # Index names differ between servers (nx-27017 names its own); find it by its keys.
    identity = [i for i in indexes if [k for k, _ in i["key"]] == ["task_id", "traj_id", "epoch"]]
    assert len(identity) == 1 and identity[0]["unique"] is True
    assert GlobalStep(dbs).incr() == 1
    assert GlobalStep(dbs).get() == 1


def test_unreachable_redis_says_how_to_start_it() -> None:
    with pytest.raises(ServiceUnavailableError, match="redis-server") as info:
        connect_redis(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert "hunter2" not in str(info.value)


def test_unreachable_mongo_names_the_url_without_password(config: AgentTrainingConfig) -> None:
    with pytest.raises(ServiceUnavailableError, match="embedded") as info:
        MongoStore(f"mongodb://user:hunter2@127.0.0.1:{free_port()}/", "x", timeout_s=0.5)
    assert "hunter2" not in str(info.value)
