"""Uploading, reading, listing, searching and deleting documents over real gRPC with
real Chroma and the real local embedding model."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmmesh.document.v1 import document_pb2

from tests.document.helpers import PARAGRAPHS, document_count, stored_chunks, upload
from tests.document.pdf import make_pdf
from tests.helpers import LoggedIn


async def test_text_upload_is_chunked_stored_and_searchable(document_stub, alice: LoggedIn,
                                                            chroma) -> None:
    text = "\n\n".join(PARAGRAPHS * 8)  # ~3.6k characters → several 1000/200 chunks
    created = await upload(document_stub, alice, "notes.txt", text, collection="science")
    assert created.name.startswith("documents/")
    assert (created.filename, created.collection, created.content_type) == (
        "notes.txt", "science", "text/plain")
    assert created.size_bytes == len(text.encode())
    assert created.chunk_count >= 4 and not created.deduplicated
    assert stored_chunks(chroma, alice.user_id) == created.chunk_count

    got = await document_stub.GetDocument(document_pb2.GetDocumentRequest(name=created.name),
                                          metadata=alice.metadata)
    assert got == created

    found = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="why are there two high tides a day?", k=3), metadata=alice.metadata)
    assert len(found.results) == 3
    best = found.results[0]
    assert best.document == created.name and best.filename == "notes.txt"
    assert "Moon" in best.text and best.collection == "science"
    scores = [r.score for r in found.results]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001

    await document_stub.DeleteDocument(document_pb2.DeleteDocumentRequest(name=created.name),
                                       metadata=alice.metadata)
    assert stored_chunks(chroma, alice.user_id) == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.GetDocument(document_pb2.GetDocumentRequest(name=created.name),
                                        metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    again = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="tides and the Moon"), metadata=alice.metadata)
    assert list(again.results) == []


async def test_markdown_and_pdf_are_recognised_by_content(document_stub, alice) -> None:
    markdown = await upload(document_stub, alice, "guide.md",
                            "# Grinder care\n\n- Unplug it\n- Brush the burrs weekly\n")
    assert markdown.content_type == "text/markdown"
    pdf_bytes = make_pdf([["Quarterly report", "Revenue grew by 12 percent."],
                          ["Outlook", "Hiring continues in the second half."]])
    # A PDF named .txt is still a PDF: the content decides.
    pdf = await upload(document_stub, alice, "report.txt", pdf_bytes)
    assert pdf.content_type == "application/pdf" and pdf.chunk_count == 1
    found = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="how much did revenue grow", k=1, documents=[pdf.name]), metadata=alice.metadata)
    assert "12 percent" in found.results[0].text


async def test_identical_content_is_not_stored_twice(document_stub, alice, chroma) -> None:
    first = await upload(document_stub, alice, "a.txt", PARAGRAPHS[1], collection="bread")
    chunks = stored_chunks(chroma, alice.user_id)
    second = await upload(document_stub, alice, "copy-of-a.txt", PARAGRAPHS[1],
                          collection="bread")
    assert second.deduplicated and second.name == first.name and second.filename == "a.txt"
    assert stored_chunks(chroma, alice.user_id) == chunks
    # The same bytes in another collection are another document.
    other = await upload(document_stub, alice, "a.txt", PARAGRAPHS[1], collection="archive")
    assert other.name != first.name and not other.deduplicated


async def test_concurrent_identical_uploads_leave_one_document(document_stub, alice,
                                                               chroma) -> None:
    text = "\n\n".join(PARAGRAPHS[2:] * 6)
    results = await asyncio.gather(*(upload(document_stub, alice, f"chain-{i}.txt", text)
                                     for i in range(3)))
    assert len({r.name for r in results}) == 1
    assert sum(not r.deduplicated for r in results) == 1
    assert stored_chunks(chroma, alice.user_id) == results[0].chunk_count


async def test_five_concurrent_uploads_all_land(document_stub, alice, chroma) -> None:
    texts = [f"Document number {i}. " + PARAGRAPHS[i % 3] * (3 + i) for i in range(5)]
    created = await asyncio.gather(*(upload(document_stub, alice, f"doc-{i}.txt", t)
                                     for i, t in enumerate(texts)))
    assert len({c.name for c in created}) == 5
    assert await document_count(document_stub, alice) == 5
    assert stored_chunks(chroma, alice.user_id) == sum(c.chunk_count for c in created)


async def test_listing_pages_newest_first_and_filters_by_collection(document_stub,
                                                                   alice) -> None:
    names = []
    for i in range(5):
        created = await upload(document_stub, alice, f"page-{i}.txt",
                               f"Page test document {i}: {PARAGRAPHS[i % 3]}",
                               collection="even" if i % 2 == 0 else "odd")
        names.append(created.name)
    first = await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(page_size=2),
                                              metadata=alice.metadata)
    second = await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(
        page_size=2, page_token=first.next_page_token), metadata=alice.metadata)
    third = await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(
        page_size=2, page_token=second.next_page_token), metadata=alice.metadata)
    listed = [d.name for page in (first, second, third) for d in page.documents]
    assert listed == names[::-1]
    assert third.next_page_token == ""

    even = await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(
        collection="even"), metadata=alice.metadata)
    assert [d.name for d in even.documents] == [names[4], names[2], names[0]]

    collections = await document_stub.ListCollections(document_pb2.ListCollectionsRequest(),
                                                      metadata=alice.metadata)
    counts = {c.name: c.document_count for c in collections.collections}
    assert counts == {"collections/even": 3, "collections/odd": 2}

    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a token of another listing
        await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(
            collection="odd", page_token=first.next_page_token), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_streamed_upload_and_progress_events(document_stub, alice) -> None:
    text = ("\n\n".join(PARAGRAPHS * 30)).encode()

    async def parts():  # type: ignore[no-untyped-def]
        yield document_pb2.UploadDocumentRequest(
            source=document_pb2.DocumentSource(filename="big.txt", collection="stream"))
        for start in range(0, len(text), 4096):
            yield document_pb2.UploadDocumentRequest(content=text[start:start + 4096])

    streamed = await document_stub.UploadDocument(parts(), metadata=alice.metadata)
    assert streamed.size_bytes == len(text) and streamed.chunk_count > 10

    events = [e async for e in document_stub.IngestDocument(
        document_pb2.IngestDocumentRequest(
            source=document_pb2.DocumentSource(filename="progress.md"),
            content=b"# Title\n\n" + text), metadata=alice.metadata)]
    stages = [document_pb2.IngestStage.Name(e.stage) for e in events]
    assert stages[:3] == ["INGEST_STAGE_RECEIVED", "INGEST_STAGE_PARSED",
                          "INGEST_STAGE_CHUNKED"]
    assert stages[-2:] == ["INGEST_STAGE_STORED", "INGEST_STAGE_DONE"]
    embedded = [e for e in events if e.stage == document_pb2.INGEST_STAGE_EMBEDDED]
    total = events[2].total_chunks
    assert len(embedded) >= 2 and embedded[-1].embedded_chunks == total
    assert [e.embedded_chunks for e in embedded] == sorted(e.embedded_chunks for e in embedded)
    assert events[-1].document.chunk_count == total
    assert events[-1].document.content_type == "text/markdown"
