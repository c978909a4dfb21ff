"""In-memory fakes at the document service's seams: the chunk store (Chroma), the
document records (Redis) and the embed callable."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from services.document.chunk_store import ChunkHit, ChunkStore
from services.document.records import DocumentRecord, DocumentRecords

WORDS = ("alpha", "beta", "gamma", "delta")


def word_vector(text: str) -> list[float]:
    """A deterministic 'embedding': counts of a few words, plus a constant axis."""
    lowered = text.lower()
    return [float(lowered.count(word)) for word in WORDS] + [0.1]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class StoredChunk:
    document_id: str
    collection: str
    filename: str
    chunk_index: int
    text: str
    vector: tuple[float, ...]
    created_at: float | None = None  # None: a chunk stored before chunks carried it


class FakeEmbed:
    """The embed callable: word vectors, with failure and blocking on demand.

    `fail_at` (a 0-based call number) raises `error` on that call; with `block_at`,
    that call sets `blocked` and waits for `unblock`."""

    def __init__(self, *, fail_at: int | None = None,
                 error: BaseException | None = None, block_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at
        self.error = error or RuntimeError("embedding failed")
        self.block_at = block_at
        self.blocked = asyncio.Event()
        self.unblock = asyncio.Event()

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        call = len(self.calls)
        self.calls.append(list(texts))
        if call == self.block_at:
            self.blocked.set()
            await self.unblock.wait()
        if call == self.fail_at:
            raise self.error
        return [word_vector(t) for t in texts]


class FakeChunkStore(ChunkStore):
    """Chunks per user in lists; cosine ranking like the Chroma collection."""

    def __init__(self, *, fail_add_at: int | None = None,
                 error: BaseException | None = None, fail_delete: bool = False,
                 clock: Callable[[], float] = lambda: 0.0) -> None:
        self.chunks: dict[str, list[StoredChunk]] = {}
        self.clock = clock
        self.scans: list[tuple[str, int, int]] = []
        self.batch_deletes: list[tuple[str, list[str]]] = []
        self.fail_delete = fail_delete
        self.adds = 0
        self.deleted: list[tuple[str, str]] = []
        self.fail_add_at = fail_add_at
        self.error = error or ConnectionError("chroma went away")
        self.queries: list[dict[str, object]] = []

    async def add(self, user_id: str, document_id: str, collection: str, filename: str,
                  first_index: int, texts: Sequence[str],
                  vectors: Sequence[Sequence[float]]) -> None:
        call = self.adds
        self.adds += 1
        if call == self.fail_add_at:
            raise self.error
        assert len(texts) == len(vectors)
        self.chunks.setdefault(user_id, []).extend(
            StoredChunk(document_id, collection, filename, first_index + n, text, tuple(v),
                        self.clock())
            for n, (text, v) in enumerate(zip(texts, vectors, strict=True)))

    async def delete_document(self, user_id: str, document_id: str) -> None:
        self.deleted.append((user_id, document_id))
        if self.fail_delete:
            raise ConnectionError("chroma went away during the cleanup")
        self.chunks[user_id] = [c for c in self.chunks.get(user_id, [])
                                if c.document_id != document_id]

    async def delete_documents(self, user_id: str, document_ids: Sequence[str]) -> None:
        self.batch_deletes.append((user_id, list(document_ids)))
        if self.fail_delete:
            raise ConnectionError("chroma went away during the cleanup")
        self.chunks[user_id] = [c for c in self.chunks.get(user_id, [])
                                if c.document_id not in document_ids]

    async def users(self) -> list[str]:
        return sorted(self.chunks)

    async def scan(self, user_id: str, offset: int,
                   limit: int) -> list[tuple[str, float | None]]:
        self.scans.append((user_id, offset, limit))
        return [(c.document_id, c.created_at)
                for c in self.chunks.get(user_id, [])[offset:offset + limit]]

    async def query(self, user_id: str, vector: Sequence[float], n_results: int, *,
                    collection: str = "", document_ids: Sequence[str] = ()) -> list[ChunkHit]:
        self.queries.append({"user_id": user_id, "n_results": n_results,
                             "collection": collection, "document_ids": list(document_ids)})
        found = [c for c in self.chunks.get(user_id, [])
                 if (not collection or c.collection == collection)
                 and (not document_ids or c.document_id in document_ids)]
        hits = [ChunkHit(c.document_id, c.filename, c.collection, c.chunk_index, c.text,
                         cosine(vector, c.vector)) for c in found]
        return sorted(hits, key=lambda h: h.score, reverse=True)[:n_results]

    def close(self) -> None:
        return None

    def of(self, user_id: str, document_id: str | None = None) -> list[StoredChunk]:
        return [c for c in self.chunks.get(user_id, [])
                if document_id is None or c.document_id == document_id]


@dataclass
class _UserRecords:
    records: dict[str, DocumentRecord] = field(default_factory=dict)
    dedupe: dict[tuple[str, str], str] = field(default_factory=dict)


class FakeDocumentRecords(DocumentRecords):
    """Committed records per user, with DocumentRecords' dedupe and listing rules."""

    def __init__(self, *, fail_commit: BaseException | None = None) -> None:
        self.users: dict[str, _UserRecords] = {}
        self.fail_commit = fail_commit
        self.commits = 0

    def _user(self, user_id: str) -> _UserRecords:
        return self.users.setdefault(user_id, _UserRecords())

    async def commit(self, user_id: str, record: DocumentRecord) -> str | None:
        self.commits += 1
        if self.fail_commit is not None:
            raise self.fail_commit
        user = self._user(user_id)
        existing = user.dedupe.get((record.collection, record.sha256))
        if existing is not None:
            return existing
        user.records[record.id] = replace(record)
        user.dedupe[(record.collection, record.sha256)] = record.id
        return None

    async def find_duplicate(self, user_id: str, collection: str, sha256: str) -> str | None:
        return self._user(user_id).dedupe.get((collection, sha256))

    async def get(self, user_id: str, document_id: str) -> DocumentRecord | None:
        return self._user(user_id).records.get(document_id)

    async def get_many(self, user_id: str, document_ids: list[str]) -> list[DocumentRecord]:
        records = self._user(user_id).records
        return [records[d] for d in document_ids if d in records]

    async def remove(self, user_id: str, document_id: str) -> bool:
        user = self._user(user_id)
        record = user.records.pop(document_id, None)
        if record is None:
            return False
        del user.dedupe[(record.collection, record.sha256)]
        return True

    async def page(self, user_id: str, offset: int, size: int,
                   collection: str = "") -> tuple[list[str], int]:
        found = [r for r in self._user(user_id).records.values()
                 if not collection or r.collection == collection]
        found.sort(key=lambda r: (r.create_time, r.id), reverse=True)
        return [r.id for r in found[offset:offset + size]], len(found)

    async def committed(self, user_id: str, document_ids: list[str]) -> set[str]:
        return set(document_ids) & set(self._user(user_id).records)

    async def collections(self, user_id: str) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for record in self._user(user_id).records.values():
            docs, chunks = counts.get(record.collection, (0, 0))
            counts[record.collection] = (docs + 1, chunks + record.chunks)
        return counts

    def of(self, user_id: str) -> list[DocumentRecord]:
        return list(self._user(user_id).records.values())
