"""Bad uploads and searches get a clear status and leave nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from tests.document.helpers import PARAGRAPHS, document_count, stored_chunks, upload
from tests.document.pdf import make_image_only_pdf, make_pdf
from tests.helpers import error_info, field_violations, register_and_login

LIMIT = 10 * 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture
async def bob(auth_stub):  # type: ignore[no-untyped-def]
    return await register_and_login(auth_stub)


@pytest.mark.parametrize(("filename", "content", "reason"), [
    ("empty.txt", b"", "EMPTY_FILE"),
    ("big.txt", b"a" * (LIMIT + 1), "UPLOAD_TOO_LARGE"),
    ("broken.pdf", make_pdf([["fine text"]])[:150], "CORRUPT_PDF"),
    ("scan.pdf", make_image_only_pdf(), "PDF_WITHOUT_TEXT"),
    ("photo.txt", PNG, "UNREADABLE_CONTENT"),
    ("latin1.txt", "café crème brûlée".encode("latin-1"), "UNREADABLE_CONTENT"),
    ("blank.md", b"   \n\n\t  \n", "NO_TEXT"),
])
async def test_bad_files_are_refused_and_nothing_is_written(document_stub, bob, chroma,
                                                            filename, content, reason) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(document_stub, bob, filename, content)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == reason
    assert "content" in field_violations(caught.value)
    assert await document_count(document_stub, bob) == 0
    assert stored_chunks(chroma, bob.user_id) == 0


@pytest.fixture(scope="module")
async def small_limit_stub(redis_server, data_dir, auth_address, embedding_address, chroma):  # type: ignore[no-untyped-def]
    """A document server that accepts at most 2,000 bytes."""
    import grpc as grpc_module
    from llmmesh.document.v1 import document_pb2_grpc

    from services.document.config import DocumentConfig
    from services.document.server import create_server
    from services.runtime.config import Env
    from tests.conftest import document_env

    env = document_env(redis_server, data_dir, auth_address, embedding_address,
                       LLMMESH_DOCUMENT_MAX_UPLOAD_BYTES="2000", **chroma.env())
    server = create_server(DocumentConfig.from_env(Env(env)))
    port = await server.start()
    async with grpc_module.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield document_pb2_grpc.DocumentServiceStub(channel)
    await server.stop(0)


async def test_exactly_the_limit_is_accepted_one_more_byte_is_not(small_limit_stub,
                                                                  bob) -> None:
    body = (" ".join(PARAGRAPHS) * 10).encode()
    accepted = await upload(small_limit_stub, bob, "at-limit.txt", body[:2000])
    assert accepted.size_bytes == 2000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(small_limit_stub, bob, "over.txt", body[1:2002])
    assert error_info(caught.value).reason == "UPLOAD_TOO_LARGE"

    async def parts(size: int):  # type: ignore[no-untyped-def]
        yield document_pb2.UploadDocumentRequest(
            source=document_pb2.DocumentSource(filename=f"stream-{size}.txt"))
        data = body[2:2 + size]
        for start in range(0, size, 300):
            yield document_pb2.UploadDocumentRequest(content=data[start:start + 300])

    streamed = await small_limit_stub.UploadDocument(parts(2000), metadata=bob.metadata)
    assert streamed.size_bytes == 2000
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await small_limit_stub.UploadDocument(parts(2001), metadata=bob.metadata)
    assert error_info(over.value).reason == "UPLOAD_TOO_LARGE"
    assert await document_count(small_limit_stub, bob) == 2


async def test_streamed_upload_stops_at_the_limit(document_address, document_stub, bob,
                                                  chroma) -> None:
    sent = 0

    def parts() -> Iterator[document_pb2.UploadDocumentRequest]:
        nonlocal sent
        yield document_pb2.UploadDocumentRequest(
            source=document_pb2.DocumentSource(filename="endless.txt"))
        for _ in range(40):  # 40 MiB offered, 4x the limit
            sent += 1
            yield document_pb2.UploadDocumentRequest(content=b"word " * 209715 + b"w")

    def upload_all() -> grpc.RpcError:
        # The blocking client: grpc.aio can report INTERNAL "Internal error from Core" in
        # place of the server's status when a write races the server ending the call
        # (grpc/grpc#36066); the blocking API reports the server's status.
        with grpc.insecure_channel(document_address) as channel:
            stub = document_pb2_grpc.DocumentServiceStub(channel)
            try:
                stub.UploadDocument(parts(), metadata=bob.metadata, timeout=60)
            except grpc.RpcError as error:
                return error
        raise AssertionError("an upload 4x the limit was accepted")

    error = await asyncio.to_thread(upload_all)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_info(error).reason == "UPLOAD_TOO_LARGE"
    assert sent < 40  # the server stopped reading; the client never pushed it all
    assert await document_count(document_stub, bob) == 0
    assert stored_chunks(chroma, bob.user_id) == 0


@pytest.mark.parametrize(("messages", "field"), [
    ([document_pb2.UploadDocumentRequest(content=b"text first")], "source"),
    ([], "source"),
    ([document_pb2.UploadDocumentRequest(source=document_pb2.DocumentSource(filename="a.txt")),
      document_pb2.UploadDocumentRequest(source=document_pb2.DocumentSource(filename="b.txt"))],
     "source"),
])
async def test_malformed_upload_streams(document_stub, bob, messages, field) -> None:
    async def parts():  # type: ignore[no-untyped-def]
        for message in messages:
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.UploadDocument(parts(), metadata=bob.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


@pytest.mark.parametrize(("source", "field"), [
    (document_pb2.DocumentSource(filename=""), "source.filename"),
    (document_pb2.DocumentSource(filename="../etc/passwd"), "source.filename"),
    (document_pb2.DocumentSource(filename="x" * 256), "source.filename"),
    (document_pb2.DocumentSource(filename="a.txt", collection="has space"),
     "source.collection"),
    (document_pb2.DocumentSource(filename="a.txt", content_type="image/png"),
     "source.content_type"),
    (document_pb2.DocumentSource(filename="a.txt", content_type="application/pdf"),
     "source.content_type"),
])
async def test_bad_sources(document_stub, bob, source, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.CreateDocument(document_pb2.CreateDocumentRequest(
            source=source, content=b"plain words"), metadata=bob.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


@pytest.mark.parametrize(("request_", "field"), [
    (document_pb2.SearchDocumentsRequest(query="tides", k=0), "k"),
    (document_pb2.SearchDocumentsRequest(query="tides", k=1000), "k"),
    (document_pb2.SearchDocumentsRequest(query=""), "query"),
    (document_pb2.SearchDocumentsRequest(query="   "), "query"),
    (document_pb2.SearchDocumentsRequest(query="q" * 2001), "query"),
    (document_pb2.SearchDocumentsRequest(query="tides", min_score=1.5), "min_score"),
    (document_pb2.SearchDocumentsRequest(query="tides", documents=["doc-1"]), "documents[0]"),
    (document_pb2.SearchDocumentsRequest(query="tides", collection="a/b"), "collection"),
])
async def test_bad_searches(document_stub, bob, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.SearchDocuments(request_, metadata=bob.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def test_search_with_no_documents_is_empty(document_stub, bob) -> None:
    found = await document_stub.SearchDocuments(
        document_pb2.SearchDocumentsRequest(query="anything at all"), metadata=bob.metadata)
    assert list(found.results) == []


@pytest.mark.parametrize("name", ["documents/", "documents/xyz", "docs/" + "a" * 32, ""])
async def test_bad_document_names(document_stub, bob, name) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.GetDocument(document_pb2.GetDocumentRequest(name=name),
                                        metadata=bob.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_min_score_filters(document_stub, bob) -> None:
    await upload(document_stub, bob, "tides.txt", PARAGRAPHS[0])
    strict = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="sourdough bread baking", min_score=0.9), metadata=bob.metadata)
    loose = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="sourdough bread baking", min_score=-1), metadata=bob.metadata)
    assert list(strict.results) == [] and len(loose.results) == 1
