"""ImportDocument as a long-running operation (AIP-151) over real gRPC, real Redis (the
queue is a Redis Stream), real Chroma and the real local embedding model: the call
returns at once, polling and waiting give progress and then the document, the
uploading client may go away, cancel rolls back, failures end the operation with the
pipeline's status, and operations are private per user.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2_grpc, operations_proto_pb2
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2
from llmmesh.document.v1 import document_pb2

from tests.document.helpers import PARAGRAPHS, document_count, stored_chunks
from tests.document.pdf import make_pdf
from tests.helpers import LoggedIn, error_info, eventually, register_and_login

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


@pytest.fixture
async def operations_stub(document_address: str) -> AsyncIterator[
        operations_pb2_grpc.OperationsStub]:
    async with grpc.aio.insecure_channel(document_address) as channel:
        yield operations_pb2_grpc.OperationsStub(channel)


@pytest.fixture
async def bob(auth_stub):  # type: ignore[no-untyped-def]
    return await register_and_login(auth_stub)


def text_of(chunks_wanted: int, salt: str) -> str:
    """A text of about `chunks_wanted` 1000/200 chunks, unique per `salt`."""
    paragraph = "\n\n".join(PARAGRAPHS)
    parts = [f"{salt} part {i}. {paragraph}" for i in range(chunks_wanted * 2)]
    return "\n\n".join(parts)


async def start_import(stub, user: LoggedIn, filename: str,  # type: ignore[no-untyped-def]
                       content: bytes | str, content_type: str = ""
                       ) -> operations_proto_pb2.Operation:
    data = content.encode() if isinstance(content, str) else content
    return await stub.ImportDocument(document_pb2.ImportDocumentRequest(
        source=document_pb2.DocumentSource(filename=filename, content_type=content_type),
        content=data), metadata=user.metadata, timeout=30)


def metadata_of(operation: operations_proto_pb2.Operation) -> document_pb2.ImportDocumentMetadata:
    found = document_pb2.ImportDocumentMetadata()
    assert operation.metadata.Unpack(found)
    return found


def document_of(operation: operations_proto_pb2.Operation) -> document_pb2.Document:
    found = document_pb2.Document()
    assert operation.response.Unpack(found)
    return found


async def wait_done(ops, user: LoggedIn, name: str,  # type: ignore[no-untyped-def]
                    within: float = 120.0) -> operations_proto_pb2.Operation:
    """WaitOperation until done (each call waits up to 20 s), bounded by `within`."""
    deadline = time.monotonic() + within
    while True:
        operation = await ops.WaitOperation(operations_proto_pb2.WaitOperationRequest(
            name=name, timeout=duration_pb2.Duration(seconds=20)), metadata=user.metadata,
            timeout=30)
        if operation.done:
            return operation
        assert time.monotonic() < deadline, f"{name} not done within {within} s"


async def test_polling_reports_progress_then_the_document(document_stub, operations_stub,
                                                          alice: LoggedIn, chroma) -> None:
    text = text_of(24, "polling")
    operation = await start_import(document_stub, alice, "notes.txt", text)
    assert operation.name.startswith("operations/") and not operation.done
    first = metadata_of(operation)
    assert (first.filename, first.collection, first.size_bytes) == (
        "notes.txt", "default", len(text.encode()))
    assert first.stage == document_pb2.INGEST_STAGE_RECEIVED

    seen: list[tuple[int, int, int]] = []

    async def poll() -> operations_proto_pb2.Operation:
        got = await operations_stub.GetOperation(
            operations_proto_pb2.GetOperationRequest(name=operation.name),
            metadata=alice.metadata)
        meta = metadata_of(got)
        seen.append((meta.stage, meta.embedded_chunks, meta.total_chunks))
        return got

    done = await eventually(poll, lambda o: o.done, within=120, what="the import")
    document = document_of(done)
    assert document.name.startswith("documents/") and not document.deduplicated
    assert document.filename == "notes.txt" and document.chunk_count >= 20
    assert metadata_of(done).stage == document_pb2.INGEST_STAGE_DONE
    embedded = [e for stage, e, _ in seen if stage == document_pb2.INGEST_STAGE_EMBEDDED]
    assert embedded and embedded == sorted(embedded), seen  # progress moved forward
    assert 0 < embedded[0] < document.chunk_count
    assert stored_chunks(chroma, alice.user_id) == document.chunk_count
    got = await document_stub.GetDocument(document_pb2.GetDocumentRequest(
        name=document.name), metadata=alice.metadata)
    assert got.chunk_count == document.chunk_count

    # Waiting on a done operation answers at once; it is listed; the stream that can
    # follow an operation ends with the document; importing the same bytes again ends
    # with the same document, deduplicated.
    waited = await wait_done(operations_stub, alice, operation.name)
    assert document_of(waited) == document
    listed = await operations_stub.ListOperations(operations_proto_pb2.ListOperationsRequest(
        name="operations"), metadata=alice.metadata)
    assert [o.name for o in listed.operations] == [operation.name]
    events = [e async for e in document_stub.IngestDocument(
        document_pb2.IngestDocumentRequest(operation=operation.name),
        metadata=alice.metadata, timeout=30)]
    assert events[-1].stage == document_pb2.INGEST_STAGE_DONE
    assert events[-1].document == document
    again = await wait_done(operations_stub, alice, (await start_import(
        document_stub, alice, "copy.txt", text)).name)
    assert document_of(again).name == document.name and document_of(again).deduplicated
    assert stored_chunks(chroma, alice.user_id) == document.chunk_count
    assert await document_count(document_stub, alice) == 1
    first_page = await operations_stub.ListOperations(
        operations_proto_pb2.ListOperationsRequest(page_size=1), metadata=alice.metadata)
    second_page = await operations_stub.ListOperations(
        operations_proto_pb2.ListOperationsRequest(
            page_size=1, page_token=first_page.next_page_token), metadata=alice.metadata)
    assert [o.name for o in [*first_page.operations, *second_page.operations]] == [
        again.name, operation.name]  # newest first
    assert second_page.next_page_token == ""


async def test_the_stream_follows_a_running_operation(document_stub, alice: LoggedIn) -> None:
    operation = await start_import(document_stub, alice, "follow.md",
                                   "# Notes\n\n" + text_of(16, "follow"))
    stages = []
    async for event in document_stub.IngestDocument(
            document_pb2.IngestDocumentRequest(operation=operation.name),
            metadata=alice.metadata, timeout=120):
        stages.append(event.stage)
        last = event
    assert stages[-1] == document_pb2.INGEST_STAGE_DONE
    assert document_pb2.INGEST_STAGE_EMBEDDED in stages
    assert last.document.content_type == "text/markdown"
    assert last.embedded_chunks == last.total_chunks == last.document.chunk_count


async def test_a_10_mib_import_returns_at_once_and_cancel_rolls_it_back(
        document_stub, operations_stub, alice: LoggedIn, chroma) -> None:
    line = "The quick brown fox jumps over the lazy dog near the riverbank at dawn.\n"
    content = (line * (10 * MIB // len(line) + 1)).encode()[:10 * MIB]
    started = time.perf_counter()
    operation = await start_import(document_stub, alice, "big.txt", content)
    elapsed = time.perf_counter() - started
    assert not operation.done
    assert elapsed < 3.0, f"ImportDocument of 10 MiB took {elapsed:.2f} s"  # 0.13-0.28 s measured

    # Let the worker get going, then cancel: the operation ends CANCELLED, nothing stays.
    await eventually(lambda: operations_stub.GetOperation(
        operations_proto_pb2.GetOperationRequest(name=operation.name),
        metadata=alice.metadata), lambda o: metadata_of(o).attempts >= 1, within=30,
        what="a worker taking the job")
    await operations_stub.CancelOperation(operations_proto_pb2.CancelOperationRequest(
        name=operation.name), metadata=alice.metadata)
    ended = await wait_done(operations_stub, alice, operation.name, within=30)
    assert ended.error.code == code_pb2.CANCELLED and metadata_of(ended).cancel_requested
    assert await document_count(document_stub, alice) == 0
    await eventually(lambda: _chunks(chroma, alice.user_id), lambda n: n == 0, within=60,
                     what="the cancelled ingestion's chunks being deleted")
    # Cancelling again, or a done operation, changes nothing; a done one can be deleted.
    await operations_stub.CancelOperation(operations_proto_pb2.CancelOperationRequest(
        name=operation.name), metadata=alice.metadata)
    await operations_stub.DeleteOperation(operations_proto_pb2.DeleteOperationRequest(
        name=operation.name), metadata=alice.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operations_stub.GetOperation(operations_proto_pb2.GetOperationRequest(
            name=operation.name), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_operation_completes_after_the_uploading_client_is_killed(
        document_stub, operations_stub, document_address: str, alice: LoggedIn,
        chroma, tmp_path: Path) -> None:
    text = text_of(8, "client-exit")
    source = tmp_path / "upload.txt"
    source.write_text(text)
    # A separate process (the server shares this test's event loop: no blocking here).
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT_SCRIPT, document_address, str(source),
        env={**os.environ, "TOKEN": alice.tokens.access_token}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert client.stdout is not None
        name = (await asyncio.wait_for(client.stdout.readline(), 30)).decode().strip()
        assert name.startswith("operations/"), name
        client.send_signal(signal.SIGKILL)
        await asyncio.wait_for(client.wait(), 10)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    done = await wait_done(operations_stub, alice, name)
    document = document_of(done)
    assert document.chunk_count > 1 and stored_chunks(chroma, alice.user_id) == \
        document.chunk_count


CLIENT_SCRIPT = """
import sys, time, os, grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = document_pb2_grpc.DocumentServiceStub(channel)
content = open(sys.argv[2], "rb").read()
operation = stub.ImportDocument(document_pb2.ImportDocumentRequest(
    source=document_pb2.DocumentSource(filename="upload.txt"), content=content),
    metadata=(("authorization", "Bearer " + os.environ["TOKEN"]),), timeout=30)
print(operation.name, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(("filename", "content", "reason"), [
    ("broken.pdf", make_pdf([["fine text"]])[:150], "CORRUPT_PDF"),
    ("photo.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "UNREADABLE_CONTENT"),
])
async def test_a_failing_document_ends_the_operation_with_its_status(
        document_stub, operations_stub, alice: LoggedIn, filename: str, content: bytes,
        reason: str) -> None:
    operation = await start_import(document_stub, alice, filename, content)
    done = await wait_done(operations_stub, alice, operation.name, within=30)
    assert done.error.code == code_pb2.INVALID_ARGUMENT
    reasons = []
    for detail in done.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert reasons == [reason]
    assert metadata_of(done).stage == document_pb2.INGEST_STAGE_FAILED
    assert await document_count(document_stub, alice) == 0


async def test_bad_requests_are_refused_before_any_operation(document_stub, operations_stub,
                                                             alice: LoggedIn) -> None:
    for content, code, reason in [
            (b"", grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_FILE"),
            (b"a" * (10 * MIB + 1), grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_TOO_LARGE")]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await start_import(document_stub, alice, "x.txt", content)
        assert caught.value.code() == code and error_info(caught.value).reason == reason
    listed = await operations_stub.ListOperations(operations_proto_pb2.ListOperationsRequest(),
                                                  metadata=alice.metadata)
    assert list(listed.operations) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operations_stub.GetOperation(operations_proto_pb2.GetOperationRequest(
            name="operations/not-an-id"), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The synchronous methods take small files only, and say where large ones go.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.CreateDocument(document_pb2.CreateDocumentRequest(
            source=document_pb2.DocumentSource(filename="big.txt"),
            content=b"a" * (MIB + 1)), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "SYNC_UPLOAD_TOO_LARGE"

    async def parts() -> AsyncIterator[document_pb2.UploadDocumentRequest]:
        yield document_pb2.UploadDocumentRequest(
            source=document_pb2.DocumentSource(filename="big.txt"))
        for _ in range(3):
            yield document_pb2.UploadDocumentRequest(content=b"a" * (MIB // 2))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await document_stub.UploadDocument(parts(), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).metadata["limit_bytes"] == str(MIB)


async def test_another_users_operation_is_not_found(document_stub, operations_stub,
                                                    alice: LoggedIn, bob: LoggedIn) -> None:
    operation = await start_import(document_stub, alice, "mine.txt", text_of(2, "private"))
    name = operation.name
    calls = [
        operations_stub.GetOperation(operations_proto_pb2.GetOperationRequest(name=name),
                                     metadata=bob.metadata),
        operations_stub.CancelOperation(operations_proto_pb2.CancelOperationRequest(
            name=name), metadata=bob.metadata),
        operations_stub.DeleteOperation(operations_proto_pb2.DeleteOperationRequest(
            name=name), metadata=bob.metadata),
        operations_stub.WaitOperation(operations_proto_pb2.WaitOperationRequest(name=name),
                                      metadata=bob.metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in document_stub.IngestDocument(document_pb2.IngestDocumentRequest(
                operation=name), metadata=bob.metadata):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await operations_stub.ListOperations(operations_proto_pb2.ListOperationsRequest(),
                                                  metadata=bob.metadata)
    assert list(listed.operations) == []
    done = await wait_done(operations_stub, alice, name, within=60)
    assert not metadata_of(done).cancel_requested and done.HasField("response")


async def _chunks(chroma, user_id: str) -> int:  # type: ignore[no-untyped-def]
    return stored_chunks(chroma, user_id)

