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
                     report: Report = lambda _: None) -> Progress:
        """Ingest `upload`; returns the final DONE progress (with the document)."""
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
        document_id = uuid.uuid4().hex
        try:
            for start in range(0, total, self._batch_size):
                batch = chunks[start:start + self._batch_size]
                vectors = await self._embed(batch)
                await self._store.add(user_id, document_id, upload.collection,
                                      upload.filename, start, batch, vectors)
                report(Progress(Stage.EMBEDDED, embedded=start + len(batch), total=total))
            record = DocumentRecord(id=document_id, collection=upload.collection,
                                    filename=upload.filename, content_type=parsed.content_type,
                                    size=len(upload.content), chunks=total, sha256=sha256,
                                    create_time=time.time())
            duplicate_id = await self._records.commit(user_id, record)
        except BaseException:
            await self._discard(user_id, document_id)
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

    async def _discard(self, user_id: str, document_id: str) -> None:
        """Delete a failed ingestion's chunks, even while being cancelled."""
        try:
            await asyncio.shield(self._store.delete_document(user_id, document_id))
        except Exception:
            log.exception("could not discard the chunks of failed ingestion %s", document_id)
