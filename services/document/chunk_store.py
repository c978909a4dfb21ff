"""Chunks and their vectors in Chroma: one Chroma collection per user, cosine space.

A user's chunks live in their own Chroma collection, so no query can reach another
user's chunks; every chunk still carries user_id, collection, document_id,
chunk_index and filename, and `created_at` (wall-clock seconds when it was stored: the
orphan janitor's age). Chroma's client is synchronous: calls run on a small
thread pool so the event loop keeps serving.

With a Chroma server (`host`), a server that cannot be reached (refused, dropped, timed
out) answers UNAVAILABLE with RetryInfo, reason STORAGE_UNAVAILABLE, as Redis does, and
is logged as an outage (rate-limited), not as a bug. A server not up yet when the service
starts is connected to on first use.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from services.runtime.errors import Unavailable
from services.runtime.storage_errors import (
    STORAGE_RETRY_SECONDS,
    STORAGE_UNAVAILABLE_REASON,
    OutageWarner,
)

if TYPE_CHECKING:  # chromadb is imported when a store is made (it is slow to import)
    from chromadb import Collection, QueryResult
    from chromadb.api import ClientAPI
    from chromadb.api.types import PyEmbeddings
    from chromadb.base_types import InclusionExclusionOperator, LiteralValue, Metadata, Where

log = logging.getLogger("llmmesh.document.chunks")

_T = TypeVar("_T")
USER_COLLECTION_PREFIX = "user_"
_Args = TypeVarTuple("_Args")


@dataclass(frozen=True)
class ChunkHit:
    document_id: str
    filename: str
    collection: str
    chunk_index: int
    text: str
    score: float  # cosine similarity, higher is more similar


class ChunkStore:
    """Adds, deletes and queries chunk vectors."""

    def __init__(self, path: Path, host: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._host = host
        self._client_: ClientAPI | None = None
        self._max_batch = 0
        self._connecting = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chroma")
        self._collections: dict[str, Collection] = {}
        self._clock = clock
        self._outage = OutageWarner(log)
        if not host:  # a directory that cannot be used is a configuration error: fail now
            path.mkdir(parents=True, exist_ok=True)
            self._connect()
            return
        try:
            self._connect()
        except Exception as error:
            if _unreachable(error) is None:
                raise
            log.warning("Chroma server %s is not reachable yet (%s); connecting on first use",
                        host, error)

    def _connect(self) -> ClientAPI:
        """The Chroma client, made on first success (called on the pool after start-up)."""
        with self._connecting:
            if self._client_ is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False)
                client: ClientAPI
                if self._host:
                    hostname, _, port = self._host.rpartition(":")
                    client = chromadb.HttpClient(host=hostname, port=int(port),
                                                 settings=settings)
                else:
                    client = chromadb.PersistentClient(path=str(self._path), settings=settings)
                self._max_batch = int(client.get_max_batch_size())
                self._client_ = client
            return self._client_

    @property
    def _client(self) -> ClientAPI:
        return self._client_ or self._connect()

    async def add(self, user_id: str, document_id: str, collection: str, filename: str,
                  first_index: int, texts: Sequence[str],
                  vectors: Sequence[Sequence[float]]) -> None:
        embeddings: PyEmbeddings = [list(v) for v in vectors]
        await self._run(self._add, user_id, document_id, collection, filename, first_index,
                        list(texts), embeddings)

    def _add(self, user_id: str, document_id: str, collection: str, filename: str,
             first_index: int, texts: list[str], vectors: PyEmbeddings) -> None:
        target = self._collection(user_id)
        created_at = self._clock()
        for start in range(0, len(texts), self._max_batch):
            end = start + self._max_batch
            indexes = range(first_index + start, first_index + min(end, len(texts)))
            # Upsert: a retried ingestion (an operation whose worker was lost) writes
            # the same ids again, never a second copy.
            target.upsert(
                ids=[f"{document_id}:{i}" for i in indexes],
                embeddings=vectors[start:end],
                documents=texts[start:end],
                metadatas=[{"user_id": user_id, "collection": collection,
                            "document_id": document_id, "chunk_index": i,
                            "filename": filename, "created_at": created_at}
                           for i in indexes],
            )

    async def delete_document(self, user_id: str, document_id: str) -> None:
        await self._run(lambda: self._collection(user_id).delete(
            where={"document_id": document_id}))

    async def delete_documents(self, user_id: str, document_ids: Sequence[str]) -> None:
        """Delete every chunk of `document_ids` (one call: keep the list bounded)."""
        if not document_ids:
            return
        among: dict[InclusionExclusionOperator, list[LiteralValue]] = {
            "$in": list(document_ids)}
        where: Where = {"document_id": among}
        await self._run(lambda: self._collection(user_id).delete(where=where))

    async def users(self) -> list[str]:
        """The users that have a chunk collection."""
        def names() -> list[str]:
            found: list[str] = []
            offset, page = 0, 100
            while True:
                listed = self._client.list_collections(limit=page, offset=offset)
                found += [c.name for c in listed]
                if len(listed) < page:
                    return found
                offset += page

        return sorted(name.removeprefix(USER_COLLECTION_PREFIX) for name in await self._run(names)
                      if name.startswith(USER_COLLECTION_PREFIX))

    async def scan(self, user_id: str, offset: int,
                   limit: int) -> list[tuple[str, float | None]]:
        """A page of a user's chunks: (document_id, created_at or None when the chunk
        predates `created_at`); fewer than `limit` means the end."""
        def page() -> list[tuple[str, float | None]]:
            found = self._collection(user_id).get(include=["metadatas"], limit=limit,
                                                  offset=offset)
            return [_stamp(meta) for meta in found["metadatas"] or []]

        return await self._run(page)

    async def query(self, user_id: str, vector: Sequence[float], n_results: int, *,
                    collection: str = "", document_ids: Sequence[str] = ()) -> list[ChunkHit]:
        clauses: list[Where] = []
        if collection:
            clauses.append({"collection": collection})
        if document_ids:
            among: dict[InclusionExclusionOperator, list[LiteralValue]] = {
                "$in": list(document_ids)}
            clauses.append({"document_id": among})
        where: Where | None = (None if not clauses else clauses[0] if len(clauses) == 1
                               else {"$and": clauses})

        embeddings: PyEmbeddings = [list(vector)]

        def query() -> QueryResult:
            return self._collection(user_id).query(
                query_embeddings=embeddings, n_results=n_results, where=where,
                include=["documents", "metadatas", "distances"])

        found = await self._run(query)
        # Present because `include` asked for them.
        assert found["metadatas"] is not None
        assert found["documents"] is not None
        assert found["distances"] is not None
        return [_hit(meta, text, distance)
                for meta, text, distance in zip(found["metadatas"][0], found["documents"][0],
                                                found["distances"][0], strict=True)]

    def _collection(self, user_id: str) -> Collection:
        found = self._collections.get(user_id)
        if found is None:
            found = self._client.get_or_create_collection(
                f"user_{user_id}", embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}})
            self._collections[user_id] = found
        return found

    async def _run(self, function: Callable[[*_Args], _T], *args: *_Args) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function,
                                                                    *args)
        except Exception as error:
            unavailable = _unreachable(error)
            if unavailable is None:
                raise
            self._outage.failed("chroma", error)
            raise unavailable from error

    def close(self) -> None:
        """Finish pending calls, then release the Chroma client (files, connections)."""
        self._pool.shutdown(wait=True)
        if self._client_ is not None:
            # chromadb annotates its client factories `-> ClientAPI`, but they return its
            # Client, which has close() (ClientAPI does not declare it).
            self._client_.close()  # type: ignore[attr-defined]


def _unreachable(error: BaseException) -> Unavailable | None:
    """UNAVAILABLE when `error` says the Chroma server cannot be reached now (chromadb
    raises httpx's transport errors, or a ValueError raised while handling one)."""
    import httpx

    if not isinstance(error, httpx.TransportError | ValueError):
        return None
    if not isinstance(error, httpx.TransportError) and not isinstance(
            error.__context__, httpx.TransportError):
        return None
    return Unavailable("the vector store is temporarily unavailable; retry shortly",
                       reason=STORAGE_UNAVAILABLE_REASON,
                       retry_after_seconds=STORAGE_RETRY_SECONDS,
                       metadata={"storage": "chroma"})


def _stamp(meta: Metadata) -> tuple[str, float | None]:
    created_at = meta.get("created_at")
    return (str(meta["document_id"]),
            float(created_at) if isinstance(created_at, int | float) else None)


def _hit(meta: Metadata, text: str | None, distance: float) -> ChunkHit:
    chunk_index = meta["chunk_index"]
    assert isinstance(chunk_index, int)  # stored as an int by `add`
    return ChunkHit(document_id=str(meta["document_id"]), filename=str(meta["filename"]),
                    collection=str(meta["collection"]), chunk_index=chunk_index,
                    text=text or "", score=1.0 - float(distance))
