"""The ingestion pipeline: parse → chunk → embed (batched) → store → commit.

All or nothing: chunks are stored batch by batch under a fresh document id, and the
document becomes visible only when its record is committed. Any failure or
cancellation before that deletes the stored chunks; searches also ignore chunks of
uncommitted documents, so even a crash mid-way never shows half a document.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.document.chunk_store import ChunkStore
from services.document.chunking import Chunker
from services.document.parsing import parse
from services.document.records import DocumentRecord, DocumentRecords

log = logging.getLogger("llmmesh.document.ingestion")

Embed = Callable[[Sequence[str]], Awaitable[list[list[float]]]]


class Stage(enum.Enum):
    RECEIVED = 1
    PARSED = 2
    CHUNKED = 3
    EMBEDDED = 4
    STORED = 5
    DONE = 6


@dataclass(frozen=True)
class Progress:
    stage: Stage
    embedded: int = 0
    total: int = 0
    document: DocumentRecord | None = None
    deduplicated: bool = False


@dataclass(frozen=True)
class Upload:
    """A validated upload."""

    filename: str
    collection: str
    claimed_type: str
    content: bytes


Report = Callable[[Progress], None]
# Makes a record visible; returns the id of an identical committed document (the
# record was not written), or None (it was, or already had been).
Commit = Callable[[str, DocumentRecord], Awaitable[str | None]]


class Ingestor:
    """Runs the pipeline for one upload at a time per call."""

    def __init__(self, chunker: Chunker, embed: Embed, store: ChunkStore,
                 records: DocumentRecords, batch_size: int) -> None:
        self._chunker = chunker
        self._embed = embed
        self._store = store
        self._records = records
        self._batch_size = batch_size

    async def ingest(self, user_id: str, upload: Upload,
                     report: Report = lambda _: None, *, document_id: str | None = None,
                     commit: Commit | None = None, embed: Embed | None = None) -> Progress:
        """Ingest `upload`; returns the final DONE progress (with the document).

        `document_id` fixes the new document's id (an operation's, so a retry after a
        lost worker rewrites the same chunk ids instead of adding others); `commit`
        replaces the plain record commit (an operation's, which also ends it); `embed`
        the service's embedding call (a background job's, with the owner's identity)."""
        report(Progress(Stage.RECEIVED))
        sha256 = hashlib.sha256(upload.content).hexdigest()
        existing = await self._existing(user_id, upload.collection, sha256)
        if existing is not None:
            return self._done(report, existing, deduplicated=True)
        parsed = await asyncio.to_thread(parse, upload.content, upload.filename,
                                         upload.claimed_type)
        report(Progress(Stage.PARSED))
        chunks = await asyncio.to_thread(self._chunker.split, parsed.text, parsed.content_type)
        total = len(chunks)
        report(Progress(Stage.CHUNKED, total=total))
        shared_id = document_id is not None  # other attempts may use (and commit) it
        document_id = document_id or uuid.uuid4().hex
        commit = commit or self._records.commit
        embed = embed or self._embed
        try:
            for start in range(0, total, self._batch_size):
                batch = chunks[start:start + self._batch_size]
                vectors = await embed(batch)
                await self._store.add(user_id, document_id, upload.collection,
                                      upload.filename, start, batch, vectors)
                report(Progress(Stage.EMBEDDED, embedded=start + len(batch), total=total))
            record = DocumentRecord(id=document_id, collection=upload.collection,
                                    filename=upload.filename, content_type=parsed.content_type,
                                    size=len(upload.content), chunks=total, sha256=sha256,
                                    create_time=time.time())
            duplicate_id = await commit(user_id, record)
        except BaseException:
            await self._discard(user_id, document_id, shared_id)
            raise
        if duplicate_id is not None:  # an identical upload committed first
            await self._discard(user_id, document_id)
            existing = await self._records.get(user_id, duplicate_id)
            if existing is not None:
                return self._done(report, existing, deduplicated=True)
        report(Progress(Stage.STORED, embedded=total, total=total))
        return self._done(report, record, deduplicated=False)

    async def _existing(self, user_id: str, collection: str,
                        sha256: str) -> DocumentRecord | None:
        found = await self._records.find_duplicate(user_id, collection, sha256)
        return None if found is None else await self._records.get(user_id, found)

    @staticmethod
    def _done(report: Report, record: DocumentRecord, *, deduplicated: bool) -> Progress:
        final = Progress(Stage.DONE, embedded=record.chunks, total=record.chunks,
                         document=record, deduplicated=deduplicated)
        report(final)
        return final

    async def _discard(self, user_id: str, document_id: str, shared_id: bool = False) -> None:
        """Delete a failed ingestion's chunks, even while being cancelled. A shared id
        (an operation's: its retries use it too) may have been committed by another
        attempt meanwhile: then the chunks are that document's and stay."""
        try:
            await asyncio.shield(self._discard_uncommitted(user_id, document_id)
                                 if shared_id else
                                 self._store.delete_document(user_id, document_id))
        except Exception:
            log.exception("could not discard the chunks of failed ingestion %s", document_id)

    async def _discard_uncommitted(self, user_id: str, document_id: str) -> None:
        if document_id not in await self._records.committed(user_id, [document_id]):
            await self._store.delete_document(user_id, document_id)
