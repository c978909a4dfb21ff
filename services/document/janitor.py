"""The orphan janitor: deletes the chunks of ingestions that never committed.

An ingestion stores its chunks in Chroma first and commits its record in Redis last; a
service killed in between leaves chunks no record will ever claim. Searches skip them,
but they take room in every query. The janitor walks each user's Chroma collection
(in pages), groups chunks by document, and deletes the documents that have no committed
record and whose newest chunk is older than `min_age`.

`min_age` must exceed the longest pause of a live ingestion between storing a batch
and storing the next one (or committing): a batch's embedding call, bounded by its
timeout, far below the default hour. Chunks stored before chunks carried `created_at`
are aged from when this janitor first saw them uncommitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.document.chunk_store import ChunkStore
from services.document.records import DocumentRecords

log = logging.getLogger("llmmesh.document.janitor")


@dataclass(frozen=True)
class Sweep:
    """What one pass removed."""

    users: int = 0  # users whose collection was walked
    documents: int = 0  # uncommitted documents deleted
    chunks: int = 0  # their chunks


class OrphanJanitor:
    """Finds and deletes the chunks of uncommitted documents older than `min_age`."""

    def __init__(self, store: ChunkStore, records: DocumentRecords, *, min_age: float,
                 clock: Callable[[], float] = time.time, scan_batch: int = 1000,
                 delete_batch: int = 100) -> None:
        self._store = store
        self._records = records
        self._min_age = min_age
        self._clock = clock
        self._scan_batch = scan_batch
        self._delete_batch = delete_batch
        # (user, document) -> when first seen uncommitted, for chunks without created_at.
        self._first_seen: dict[tuple[str, str], float] = {}

    async def run(self) -> Sweep:
        """One pass over every user's collection; a user that fails is logged and skipped."""
        users = documents = chunks = 0
        for user_id in await self._store.users():
            try:
                swept = await self.sweep_user(user_id)
            except Exception:
                log.exception("orphan sweep failed", extra={"user_id": user_id})
                continue
            users += 1
            documents += swept.documents
            chunks += swept.chunks
        result = Sweep(users=users, documents=documents, chunks=chunks)
        log.info("orphan sweep done", extra={"users": users, "documents": documents,
                                             "chunks": chunks})
        return result

    async def sweep_user(self, user_id: str) -> Sweep:
        """Delete one user's orphaned chunks."""
        now = self._clock()
        newest: dict[str, float | None] = {}  # document -> newest created_at (None: unknown)
        counts: dict[str, int] = {}
        offset = 0
        while True:
            page = await self._store.scan(user_id, offset, self._scan_batch)
            for document_id, created_at in page:
                counts[document_id] = counts.get(document_id, 0) + 1
                seen = newest.get(document_id, created_at)
                newest[document_id] = (None if seen is None or created_at is None
                                       else max(seen, created_at))
            if len(page) < self._scan_batch:
                break
            offset += len(page)

        ids = sorted(newest)
        committed: set[str] = set()
        for start in range(0, len(ids), self._delete_batch):
            committed |= await self._records.committed(
                user_id, ids[start:start + self._delete_batch])
        self._forget(user_id, keep=set(ids) - committed)
        orphans = [d for d in ids if d not in committed
                   and now - self._created(user_id, d, newest[d], now) >= self._min_age]
        for start in range(0, len(orphans), self._delete_batch):
            await self._store.delete_documents(user_id, orphans[start:start + self._delete_batch])
        for document_id in orphans:
            self._first_seen.pop((user_id, document_id), None)
        chunks = sum(counts[d] for d in orphans)
        if orphans:
            log.info("deleted orphaned chunks", extra={"user_id": user_id,
                                                       "documents": len(orphans),
                                                       "chunks": chunks})
        return Sweep(users=1, documents=len(orphans), chunks=chunks)

    async def run_periodically(self, interval: float, stop: asyncio.Event) -> None:
        """A pass now, then one every `interval` seconds, until `stop` is set."""
        # The flag, not only a cancel, ends the loop: on Python 3.11 a cancel that lands
        # while a Redis read times out can surface as that timeout, caught below.
        while not stop.is_set():
            try:
                await self.run()
            except Exception:
                log.exception("orphan sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _created(self, user_id: str, document_id: str, created_at: float | None,
                 now: float) -> float:
        if created_at is not None:
            return created_at
        return self._first_seen.setdefault((user_id, document_id), now)

    def _forget(self, user_id: str, keep: set[str]) -> None:
        """Drop first-seen times of this user's documents no longer uncommitted."""
        for key in [k for k in self._first_seen if k[0] == user_id and k[1] not in keep]:
            del self._first_seen[key]


class JanitorTask:
    """Runs a janitor in the background: `start` returns at once, `stop` cancels it."""

    def __init__(self, janitor: OrphanJanitor, interval: float) -> None:
        self.janitor = janitor
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(
                self.janitor.run_periodically(self._interval, self._stop),
                name="document-orphan-janitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
