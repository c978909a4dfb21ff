"""A document worker process SIGKILLed mid-ingestion: the real service as a process
(`python -m services.document`, two worker processes on a Chroma server, its own Redis),
the queue entry claimed again after the (short, test-set) idle timeout, and the
operation finished by a worker exactly once: one document with exactly the right chunk
count in Chroma.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2_grpc, operations_proto_pb2
from google.protobuf import duration_pb2
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from mesh.chroma_server import LocalChroma
from mesh.redis_server import LocalRedis
from services.document.chunking import Chunker
from services.document.operations import OperationStore, new_operation_id
from services.document.parsing import parse
from services.document.queue import GROUP, IngestQueue, stream_key
from services.document.records import DocumentRecords
from services.runtime.redis_client import redis_client
from tests.document.helpers import PARAGRAPHS, ChromaStore, document_count, stored_chunks
from tests.faults.processes import ServiceProcess, process_env
from tests.helpers import LoggedIn, eventually

CLAIM_IDLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("operations-redis"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def document_process(own_redis: LocalRedis, chroma_server: LocalChroma,
                           auth_address: str, embedding_address: str,
                           tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    env = process_env(tmp_path / "data", own_redis.url,
                      LLMMESH_AUTH_ADDRESS=auth_address,
                      LLMMESH_EMBEDDING_ADDRESS=embedding_address,
                      LLMMESH_CHROMA_HOST=chroma_server.address,
                      LLMMESH_DOCUMENT_WORKERS="2",
                      LLMMESH_DOCUMENT_INGEST_CONCURRENCY="1",
                      LLMMESH_DOCUMENT_EMBED_BATCH_SIZE="8",
                      LLMMESH_DOCUMENT_CLAIM_IDLE_SECONDS=str(CLAIM_IDLE_SECONDS))
    service = ServiceProcess("document", env, tmp_path / "logs")
    await service.start()
    try:
        yield service
    finally:
        service.stop()


async def test_a_killed_worker_s_operation_is_finished_by_another_exactly_once(
        document_process: ServiceProcess, own_redis: LocalRedis, chroma_server: LocalChroma,
        alice: LoggedIn) -> None:
    text = "\n\n".join(f"kill test {i}. " + " ".join(PARAGRAPHS) for i in range(100))
    parsed = parse(text.encode(), "kill.txt")
    expected = len(Chunker(1000, 200).split(parsed.text, parsed.content_type))
    assert expected >= 40
    redis = redis_client(own_redis.url)
    stream = stream_key(chroma_server.address)
    try:
        async with grpc.aio.insecure_channel(document_process.address) as channel:
            documents = document_pb2_grpc.DocumentServiceStub(channel)
            operations = operations_pb2_grpc.OperationsStub(channel)
            operation = await documents.ImportDocument(document_pb2.ImportDocumentRequest(
                source=document_pb2.DocumentSource(filename="kill.txt"),
                content=text.encode()), metadata=alice.metadata, timeout=30)

            async def progress() -> document_pb2.ImportDocumentMetadata:
                got = await operations.GetOperation(operations_proto_pb2.GetOperationRequest(
                    name=operation.name), metadata=alice.metadata)
                meta = document_pb2.ImportDocumentMetadata()
                got.metadata.Unpack(meta)
                assert not got.done, "finished before the worker could be killed"
                return meta

            # Mid-ingestion: some batches embedded and stored, not all.
            await eventually(progress, lambda m: m.embedded_chunks >= 8, within=60,
                             what="the first batches being stored")
            pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
            assert len(pending) == 1
            holder = pending[0]["consumer"]
            holder = holder.decode() if isinstance(holder, bytes) else holder
            pid = int(holder.rsplit("-", 2)[1])
            assert document_process.process is not None
            assert pid != document_process.process.pid  # a worker, not the supervisor
            os.kill(pid, signal.SIGKILL)

            deadline = time.monotonic() + 180
            while True:
                assert time.monotonic() < deadline, document_process.log[-3000:]
                try:
                    done = await operations.WaitOperation(
                        operations_proto_pb2.WaitOperationRequest(
                            name=operation.name, timeout=duration_pb2.Duration(seconds=20)),
                        metadata=alice.metadata, timeout=30, wait_for_ready=True)
                except grpc.aio.AioRpcError as error:
                    # The call may have been on the killed worker's connection.
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    continue
                if done.done:
                    break
            assert not done.HasField("error"), done.error
            document = document_pb2.Document()
            done.response.Unpack(document)
            meta = document_pb2.ImportDocumentMetadata()
            done.metadata.Unpack(meta)
            assert meta.attempts >= 2  # started again after the kill
            assert document.chunk_count == expected
            assert stored_chunks(ChromaStore(host=chroma_server.address),
                                 alice.user_id) == expected
            assert await document_count(documents, alice) == 1
            assert await redis.xlen(stream) == 0  # acknowledged and deleted
    finally:
        await redis.aclose()


async def test_an_operation_its_process_never_queued_is_queued_by_a_worker(
        document_process: ServiceProcess, own_redis: LocalRedis, chroma_server: LocalChroma,
        alice: LoggedIn) -> None:
    """What ImportDocument leaves when its process dies between writing the operation
    and queueing it: the intent and the operation, no queue entry."""
    redis = redis_client(own_redis.url)
    queue = IngestQueue(redis, stream_key(chroma_server.address), claim_idle_seconds=60)
    store = OperationStore(redis, DocumentRecords(redis), upload_ttl_seconds=3600,
                           retention_seconds=3600)
    operation_id = new_operation_id()
    try:
        await queue.intend(alice.user_id, operation_id, time.time())
        await store.create(alice.user_id, "stranded.txt", "", "",
                           " ".join(PARAGRAPHS).encode(), operation_id)
        assert await redis.xlen(queue.stream) == 0
        async with grpc.aio.insecure_channel(document_process.address) as channel:
            operations = operations_pb2_grpc.OperationsStub(channel)
            name = f"operations/{operation_id}"

            async def state() -> operations_proto_pb2.Operation:
                return await operations.GetOperation(
                    operations_proto_pb2.GetOperationRequest(name=name),
                    metadata=alice.metadata, timeout=10)

            # Picked up once its intent is older than the claim timeout (2 s here).
            done = await eventually(state, lambda op: op.done, within=60,
                                    what="the stranded operation to finish")
        assert not done.HasField("error"), done.error
        document = document_pb2.Document()
        done.response.Unpack(document)
        assert document.chunk_count >= 1 and document.filename == "stranded.txt"
        assert await queue.stranded(time.time() + 3600) == []  # the intent is gone
    finally:
        await redis.aclose()
