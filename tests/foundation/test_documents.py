"""Documents round-trip through the MongoDB-wire server with their registered types."""

from __future__ import annotations

from datetime import UTC

import pytest
from pydantic import ValidationError

from agentrl.databases import (
    Databases,
    InferenceService,
    Record,
    RecordStatus,
    Task,
    register_new_model,
)
from agentrl.errors import DocumentNotFoundError, DuplicateModelError, UnknownModelError


@register_new_model
class QATask(Task):
    """A custom task in the style of the AgentRL guide (its RFTTask lives in tests/jobs)."""

    inputs: list[dict]
    target: str


def test_registered_subclass_round_trips_with_its_type_and_fields(dbs: Databases) -> None:
    task = QATask(inputs=[{"role": "user", "content": "2+2?"}], target="4", split="train", epoch=1)
    assert dbs.store.insert(task)
    raw = dbs.store.collection(Task).find_one({"_id": task.id})
    assert raw["_type"] == "QATask"
    loaded = dbs.store.get(Task, task.id)
    assert type(loaded) is QATask
    assert loaded.inputs == [{"role": "user", "content": "2+2?"}]
    assert loaded.target == "4"
    assert loaded.epoch == 1
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() == UTC.utcoffset(None)


def test_subclass_fields_are_validated_on_load(dbs: Databases) -> None:
    task = QATask(inputs=[], target="x")
    dbs.store.insert(task)
    dbs.store.collection(Task).update_one({"_id": task.id}, {"$set": {"target": ["not", "str"]}})
    with pytest.raises(ValidationError, match="target"):
        dbs.store.get(Task, task.id)


def test_same_record_identity_twice_makes_one_document(dbs: Databases) -> None:
    first = Record(id=Record.identity_id("t1", 0, 1), task_id="t1", traj_id=0, epoch=1)
    assert dbs.store.insert(first)
    again = Record(id=Record.identity_id("t1", 0, 1), task_id="t1", traj_id=0, epoch=1)
    assert not dbs.store.insert(again)
    # Even with a different _id, the unique (task_id, traj_id, epoch) index refuses a duplicate.
    other_id = Record(task_id="t1", traj_id=0, epoch=1, status=RecordStatus.RUNNING)
    assert not dbs.store.insert(other_id)
    assert dbs.store.collection(Record).count_documents({"task_id": "t1"}) == 1
    assert dbs.store.get(Record, first.id).status is RecordStatus.CREATED


def test_registering_a_name_twice_raises() -> None:
    with pytest.raises(DuplicateModelError, match="QATask"):

        @register_new_model
        class QATask(Task):  # noqa: F811 — the clash is the point
            other: int = 0


def test_unknown_type_names_the_document(dbs: Databases) -> None:
    dbs.store.collection(Task).insert_one({"_id": "x1", "_type": "NeverRegistered"})
    with pytest.raises(UnknownModelError, match="x1"):
        dbs.store.get(Task, "x1")
    with pytest.raises(DocumentNotFoundError):
        dbs.store.get(Task, "missing")


def test_service_api_key_never_in_public_view(dbs: Databases) -> None:
    service = InferenceService(
        name="api",
        endpoint="https://api.example",
        models=["m"],
        api_key="sk-secret",
        kind="external",
    )
    dbs.store.insert(service)
    loaded = dbs.store.get(InferenceService, service.id)
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(loaded)
    assert "api_key" not in loaded.public_view()


def test_datetimes_written_by_update_load_back_utc_aware(dbs: Databases) -> None:
    task = QATask(inputs=[], target="x")
    dbs.store.insert(task)
    assert dbs.store.update(Task, task.id, {"status": "running"})
    loaded = dbs.store.get(Task, task.id)
    assert loaded.updated_at.utcoffset() == UTC.utcoffset(None)
    # MongoDB keeps milliseconds: the update may land in the millisecond of the creation
    assert loaded.updated_at >= task.created_at.replace(
        microsecond=task.created_at.microsecond // 1000 * 1000)
