"""A 1 MB image inside a message round-trips byte-exact through both object stores, and the
stored document keeps only a reference."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from agentrl.databases import Databases, DispatchedSamplingTask
from agentrl.databases.objectstore import (
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    externalize,
    internalize,
    open_object_store,
)
from agentrl.errors import ObjectNotFoundError


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return S3ObjectStore(request.getfixturevalue("s3_url"))


def _message_with_image(image: bytes) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is on the screen?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def test_image_round_trips_and_document_holds_no_bytes(store: ObjectStore, dbs: Databases) -> None:
    image = os.urandom(1024 * 1024)
    messages = _message_with_image(image)
    stored = externalize(messages, store, prefix="records/r1")
    doc = DispatchedSamplingTask(record_id="r1", task_id="t1", request={"messages": stored})
    dbs.store.insert(doc)
    raw = dbs.store.collection(DispatchedSamplingTask).find_one({"_id": doc.id})
    assert len(json.dumps(raw, default=str)) < 10_000  # a reference, not 1.4 MB of base64
    ref = raw["request"]["messages"][0]["content"][1]["image_url"]["url"]
    assert ref["$objref"].startswith("objstore://records/r1/")
    restored = internalize(raw["request"]["messages"], store)
    assert restored == messages
    url = restored[0]["content"][1]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == image


def test_raw_bytes_round_trip_and_missing_object(store: ObjectStore) -> None:
    blob = os.urandom(4096)
    value = externalize({"screenshot": blob, "small": b"tiny"}, store, prefix="obs")
    assert value["small"] == b"tiny"
    assert internalize(value, store)["screenshot"] == blob
    with pytest.raises(ObjectNotFoundError):
        store.get("objstore://obs/never-written.bin")


def test_open_object_store_picks_by_connection_string(tmp_path: Path, s3_url: str) -> None:
    assert isinstance(open_object_store("", str(tmp_path)), LocalObjectStore)
    assert isinstance(open_object_store(s3_url, str(tmp_path)), S3ObjectStore)
