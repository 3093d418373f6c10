"""`WriteBuffer`: group commit of the call-log writes of one worker process.

Hundreds of trajectories in one process each log their LLM calls (a DispatchedSamplingTask
goes ``pending → running → completed``). Sent one by one, these writes are most of the MongoDB
round trips of sampling. The buffer collects them for ``linger_s`` seconds and writes each
collection's batch as one unordered ``bulk_write`` of upserts by ``_id``:

- a later write of a document still waiting replaces it (``pending → running`` within the
  window reaches MongoDB as one write; a status that lasts longer than the window is stored);
  the document is serialized when its batch is written, so the replaced states cost nothing;
- writes of one document reach MongoDB in the order they were made (batches are sequential);
- the future each write returns resolves once its batch is stored; the trajectory awaits the
  futures of its calls before its Record is finished, so a READY Record never lacks its calls;
- a batch that fails on a connection error is retried with backoff for ``retry_for_s`` seconds
  (a MongoDB restart is waited out); other errors fail that batch's futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from pymongo import ReplaceOne
from pymongo.errors import ConnectionFailure, PyMongoError

from agentrl.databases import AsyncMongoStore, Document

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX_S = 5.0
"""Longest pause between two tries of a batch while MongoDB does not answer."""


@dataclass
class _Entry:
    doc: Document
    futures: list[asyncio.Future[None]] = field(default_factory=list)


class WriteBuffer:
    """Collects document upserts and writes them in batches (see the module docstring).

    Args:
        store: async MongoDB access.
        linger_s: seconds a write waits for others to share its round trip.
        retry_for_s: seconds a batch is retried while MongoDB is unreachable.

    Create it inside the event loop that uses it; :meth:`aclose` flushes what is left.
    """

    def __init__(self, store: AsyncMongoStore, linger_s: float, retry_for_s: float) -> None:
        self.store, self.linger_s, self.retry_for_s = store, linger_s, retry_for_s
        self._pending: dict[str, dict[str, _Entry]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self.batches = 0

    def upsert(self, doc: Document) -> asyncio.Future[None]:
        """Queue ``doc`` for writing (replacing a queued version of the same ``_id``).

        Returns:
            A future resolved once the document is stored.
        """
        pending = self._pending.setdefault(doc.collection_name, {})
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = pending.get(doc.id)
        if entry is None:
            pending[doc.id] = _Entry(doc, [future])
        else:
            entry.doc = doc
            entry.futures.append(future)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return future

    async def flush(self) -> None:
        """Write everything queued now (without waiting for the linger window)."""
        async with self._flushing:  # batches stay sequential: a document's writes keep order
            while self._pending:
                batches, self._pending = self._pending, {}
                for collection, entries in batches.items():
                    await self._write(collection, entries)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.linger_s)
            await self.flush()

    async def _write(self, collection: str, entries: dict[str, _Entry]) -> None:
        ops = []
        for key, entry in list(entries.items()):
            try:
                ops.append(ReplaceOne({"_id": key}, entry.doc.to_mongo(), upsert=True))
            except Exception as exc:  # noqa: BLE001 - one bad document fails only its writers
                del entries[key]
                for future in entry.futures:
                    if not future.done():
                        future.set_exception(exc)
        if not ops:
            return
        deadline = time.monotonic() + self.retry_for_s
        pause = 0.2
        error: BaseException | None = None
        while True:
            try:
                await self.store.db[collection].bulk_write(ops, ordered=False)
                self.batches += 1
                break
            except ConnectionFailure as exc:
                if time.monotonic() >= deadline:
                    error = exc
                    break
                log.warning("MongoDB unreachable; retrying %d %s writes in %.1f s",
                            len(ops), collection, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_BACKOFF_MAX_S)
            except PyMongoError as exc:
                error = exc
                break
        for entry in entries.values():
            for future in entry.futures:
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def aclose(self) -> None:
        """Write what is queued and stop the background flusher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
