"""The MongoDB store: typed access to documents over pymongo (sync) and AsyncMongoClient (async).

Every query is standard MongoDB, so the same code runs on the embedded nx-27017 server and on a
real MongoDB. Domain operations (claiming, scoring, leasing) live next to their users and call
:meth:`MongoStore.collection` / :meth:`AsyncMongoStore.collection` with plain update documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import pymongo
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from agentrl.databases.documents import (
    DispatchedSamplingTask,
    Document,
    InferenceService,
    Record,
    Task,
    utcnow,
)
from agentrl.errors import DocumentNotFoundError, ServiceUnavailableError

D = TypeVar("D", bound=Document)

INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    Task.collection_name: [
        ([("split", 1), ("epoch", 1), ("status", 1)], {}),
    ],
    Record.collection_name: [
        ([("task_id", 1), ("traj_id", 1), ("epoch", 1)], {"unique": True, "name": "identity"}),
        ([("status", 1), ("split", 1)], {}),
    ],
    DispatchedSamplingTask.collection_name: [
        ([("record_id", 1), ("turn", 1)], {}),
    ],
    InferenceService.collection_name: [
        ([("name", 1)], {"unique": True}),
        ([("status", 1)], {}),
    ],
}
"""Indexes the queries need, per collection: (keys, options)."""


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` removed, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class MongoStore:
    """Synchronous typed access to the agentrl database.

    Args:
        uri: MongoDB URI.
        db_name: database name.
        timeout_s: server selection timeout in seconds.

    Raises:
        ServiceUnavailableError: the server does not answer a ping within ``timeout_s``.
    """

    def __init__(self, uri: str, db_name: str, timeout_s: float = 10.0) -> None:
        self.uri, self.db_name = uri, db_name
        self.client: MongoClient = MongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000)
        )
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise ServiceUnavailableError(
                redact_url(uri),
                "MongoDB does not answer; leave db_connection_string empty to use the embedded "
                f"server, or start MongoDB ({exc})",
            ) from exc
        self.db = self.client[db_name]

    def create_indexes(self) -> None:
        """Create :data:`INDEXES` (idempotent)."""
        for coll, specs in INDEXES.items():
            for keys, options in specs:
                self.db[coll].create_index(keys, **options)

    def collection(self, model: type[Document]) -> pymongo.collection.Collection:
        """The pymongo collection holding ``model`` documents."""
        return self.db[model.collection_name]

    def insert(self, doc: Document) -> bool:
        """Insert ``doc``. Returns False (and changes nothing) if its ``_id`` or unique key
        exists already."""
        try:
            self.collection(type(doc)).insert_one(doc.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    def insert_many(self, docs: list[Document]) -> int:
        """Insert many documents of one collection in one round trip, skipping existing ids.

        Returns:
            The number inserted.
        """
        if not docs:
            return 0
        try:
            result = self.collection(type(docs[0])).insert_many(
                [d.to_mongo() for d in docs], ordered=False
            )
            return len(result.inserted_ids)
        except pymongo.errors.BulkWriteError as exc:
            return int(exc.details.get("nInserted", 0))

    def get(self, model: type[D], doc_id: str) -> D:
        """Load one document by id as its registered class.

        Raises:
            DocumentNotFoundError: no such document.
        """
        raw = self.collection(model).find_one({"_id": doc_id})
        if raw is None:
            raise DocumentNotFoundError(model.collection_name, doc_id)
        return model.from_mongo(raw)

    def find(
        self, model: type[D], query: dict[str, Any] | None = None, **kwargs: Any
    ) -> Iterator[D]:
        """Documents matching ``query`` (pymongo ``find`` keyword arguments pass through)."""
        for raw in self.collection(model).find(query or {}, **kwargs):
            yield model.from_mongo(raw)

    def update(self, model: type[Document], doc_id: str, fields: dict[str, Any]) -> bool:
        """``$set`` ``fields`` (and ``updated_at``) on one document. Returns whether it exists."""
        result = self.collection(model).update_one(
            {"_id": doc_id}, {"$set": {**fields, "updated_at": utcnow()}}
        )
        return result.matched_count == 1

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


class AsyncMongoStore:
    """Asynchronous typed access to the agentrl database (pymongo's ``AsyncMongoClient``).

    Create it inside the event loop that uses it. Same methods as :class:`MongoStore`, awaited.
    """

    def __init__(self, uri: str, db_name: str, timeout_s: float = 10.0) -> None:
        self.uri, self.db_name = uri, db_name
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000)
        )
        self.db = self.client[db_name]

    def collection(self, model: type[Document]) -> Any:
        """The async pymongo collection holding ``model`` documents."""
        return self.db[model.collection_name]

    async def insert(self, doc: Document) -> bool:
        """Insert ``doc``; False if its id or unique key exists already."""
        try:
            await self.collection(type(doc)).insert_one(doc.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    async def get(self, model: type[D], doc_id: str) -> D:
        """Load one document by id. Raises :class:`DocumentNotFoundError` when absent."""
        raw = await self.collection(model).find_one({"_id": doc_id})
        if raw is None:
            raise DocumentNotFoundError(model.collection_name, doc_id)
        return model.from_mongo(raw)

    async def find(
        self, model: type[D], query: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[D]:
        """All documents matching ``query``."""
        cursor = self.collection(model).find(query or {}, **kwargs)
        return [model.from_mongo(raw) async for raw in cursor]

    async def update(self, model: type[Document], doc_id: str, fields: dict[str, Any]) -> bool:
        """``$set`` ``fields`` (and ``updated_at``) on one document. Returns whether it exists."""
        result = await self.collection(model).update_one(
            {"_id": doc_id}, {"$set": {**fields, "updated_at": utcnow()}}
        )
        return result.matched_count == 1

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()
