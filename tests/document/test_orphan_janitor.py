"""A document service killed between storing chunks and committing the record leaves
orphaned chunks in Chroma; the orphan janitor deletes them once they are old enough,
and searches answer the same before and after."""

from __future__ import annotations

import time

import grpc
import pytest
from llmmesh.document.v1 import document_pb2

from services.document.janitor import OrphanJanitor, Sweep
from services.document.records import DocumentRecord
from services.document.server import DocumentServer
from tests.document.helpers import PARAGRAPHS, document_count, stored_chunks, upload
from tests.helpers import LoggedIn

ORPHAN_TEXT = "\n\n".join(f"Orphan section {i}. " + PARAGRAPHS[0] * 4 for i in range(40))


async def _search(stub, user: LoggedIn, query: str, k: int) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    found = await stub.SearchDocuments(document_pb2.SearchDocumentsRequest(query=query, k=k),
                                       metadata=user.metadata)
    return [(r.document, r.chunk_index) for r in found.results]


async def test_janitor_removes_the_chunks_of_an_ingestion_that_never_committed(
        document_server, document_stub, alice: LoggedIn, chroma,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(document_server, DocumentServer)
    kept = [await upload(document_stub, alice, f"tides-{n}.txt", PARAGRAPHS[0] + f" ({n})")
            for n in range(3)]
    committed_chunks = sum(d.chunk_count for d in kept)
    before = await _search(document_stub, alice, "Moon gravity and ocean tides", 3)
    assert {name for name, _ in before} == {d.name for d in kept}

    # The process "dies" after storing every chunk: no commit, no cleanup.
    async def killed_commit(user_id: str, record: DocumentRecord) -> str | None:
        raise ConnectionError("the service was killed before committing")

    async def no_cleanup(user_id: str, document_id: str) -> None:
        raise ConnectionError("the service was killed before cleaning up")

    monkeypatch.setattr(document_server.records, "commit", killed_commit)
    monkeypatch.setattr(document_server.store, "delete_document", no_cleanup)
    with pytest.raises(grpc.aio.AioRpcError):
        await upload(document_stub, alice, "orphan.txt", ORPHAN_TEXT)
    monkeypatch.undo()
    orphaned = stored_chunks(chroma, alice.user_id) - committed_chunks
    assert orphaned > 8  # several batches landed
    assert await document_count(document_stub, alice) == 3
    assert await _search(document_stub, alice, "Moon gravity and ocean tides", 3) == before

    # The service's own janitor (real clock, an hour's threshold) leaves young chunks be.
    assert await document_server.janitor.sweep_user(alice.user_id) == Sweep(users=1)
    assert stored_chunks(chroma, alice.user_id) == committed_chunks + orphaned

    later = OrphanJanitor(document_server.store, document_server.records, min_age=900.0,
                          clock=lambda: time.time() + 901.0, scan_batch=5, delete_batch=1)
    swept = await later.sweep_user(alice.user_id)

    assert swept == Sweep(users=1, documents=1, chunks=orphaned)
    assert stored_chunks(chroma, alice.user_id) == committed_chunks
    assert await document_count(document_stub, alice) == 3
    assert await _search(document_stub, alice, "Moon gravity and ocean tides", 3) == before
    # Committed chunks are never orphans, however old.
    assert await later.sweep_user(alice.user_id) == Sweep(users=1)
