"""Reading, searching and deleting a user's documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.document.chunk_store import ChunkHit, ChunkStore
from services.document.ingestion import Embed
from services.document.records import DocumentRecord, DocumentRecords
from services.runtime import tracing
from services.runtime.errors import NotFound
from services.runtime.names import document_name

SEARCH_OVERFETCH = 10  # room for chunks of uncommitted documents, dropped after the query
# When uncommitted chunks (an ingestion in flight, or a failed one's leftovers) crowd the
# first fetch, it is widened (doubling) up to this many chunks.
SEARCH_MAX_FETCH = 2000


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int


class DocumentLibrary:
    """Every operation is scoped to one user: others' documents do not exist here."""

    def __init__(self, store: ChunkStore, records: DocumentRecords, embed: Embed) -> None:
        self._store = store
        self._records = records
        self._embed = embed

    async def get(self, user_id: str, document_id: str) -> DocumentRecord:
        record = await self._records.get(user_id, document_id)
        if record is None:
            raise NotFound("document", document_name(document_id))
        return record

    async def page(self, user_id: str, offset: int, size: int,
                   collection: str = "") -> tuple[list[DocumentRecord], bool]:
        """Documents newest first from `offset`; and whether more follow."""
        ids, total = await self._records.page(user_id, offset, size, collection)
        return await self._records.get_many(user_id, ids), offset + size < total

    async def delete(self, user_id: str, document_id: str) -> None:
        if not await self._records.remove(user_id, document_id):
            raise NotFound("document", document_name(document_id))
        await self._store.delete_document(user_id, document_id)

    async def search(self, user_id: str, query: str, k: int, *, collection: str = "",
                     document_ids: Sequence[str] = (),
                     min_score: float | None = None) -> list[ChunkHit]:
        with tracing.span("retrieval chroma", {tracing.GEN_AI_OPERATION: "retrieval",
                                               tracing.GEN_AI_DATA_SOURCE: "chroma"}):
            return await self._search(user_id, query, k, collection=collection,
                                      document_ids=document_ids, min_score=min_score)

    async def _search(self, user_id: str, query: str, k: int, *, collection: str,
                      document_ids: Sequence[str], min_score: float | None) -> list[ChunkHit]:
        (vector,) = await self._embed([query])
        fetch = k + SEARCH_OVERFETCH
        while True:
            with tracing.span("query chroma", {tracing.DB_SYSTEM: "chromadb",
                                               tracing.DB_OPERATION: "query"},
                              kind=tracing.SpanKind.CLIENT) as span:
                hits = await self._store.query(user_id, vector, fetch, collection=collection,
                                               document_ids=document_ids)
                span.set_attribute(tracing.DB_RETURNED_ROWS, len(hits))
            committed = await self._records.committed(
                user_id, sorted({h.document_id for h in hits}))
            kept = [h for h in hits if h.document_id in committed]
            # Enough committed hits, or the store has no more, or the widening is spent.
            if len(kept) >= k or len(hits) < fetch or fetch >= SEARCH_MAX_FETCH:
                break
            fetch = min(fetch * 2, SEARCH_MAX_FETCH)
        kept = [h for h in kept if min_score is None or h.score >= min_score]
        kept.sort(key=lambda h: h.score, reverse=True)
        return kept[:k]

    async def collections(self, user_id: str) -> list[CollectionInfo]:
        found = await self._records.collections(user_id)
        return [CollectionInfo(name, docs, chunks)
                for name, (docs, chunks) in sorted(found.items())]
