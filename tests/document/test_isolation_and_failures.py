"""Users cannot see each other's documents; a failure or a cancel in the middle of an
ingestion leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from services.document.config import DocumentConfig
from services.document.server import create_server as create_document_server
from services.embedding.config import EmbeddingConfig
from services.embedding.server import create_server as create_embedding_server
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import document_env, mesh_env
from tests.document.helpers import PARAGRAPHS, ChromaStore, document_count, stored_chunks, upload
from tests.fake_embeddings_provider import DIMENSION, FakeEmbeddingsProvider, running_provider
from tests.helpers import error_info, eventually, register_and_login


async def test_two_users_never_see_each_others_documents(document_stub, auth_stub) -> None:
    alice = await register_and_login(auth_stub)
    bob = await register_and_login(auth_stub)
    secret = await upload(document_stub, alice, "alice-secret.txt",
                          "The launch code for project Nightingale is 7-4-1-9.",
                          collection="private")
    await upload(document_stub, bob, "bob-notes.txt", PARAGRAPHS[2], collection="private")

    found = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="launch code for project Nightingale", k=50), metadata=bob.metadata)
    assert all(r.filename == "bob-notes.txt" for r in found.results)
    found = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="launch code", documents=[secret.name]), metadata=bob.metadata)
    assert list(found.results) == []

    listed = await document_stub.ListDocuments(document_pb2.ListDocumentsRequest(),
                                               metadata=bob.metadata)
    assert [d.filename for d in listed.documents] == ["bob-notes.txt"]
    for call in (document_stub.GetDocument(document_pb2.GetDocumentRequest(name=secret.name),
                                           metadata=bob.metadata),
                 document_stub.DeleteDocument(
                     document_pb2.DeleteDocumentRequest(name=secret.name),
                     metadata=bob.metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Alice's document survived Bob's delete attempt.
    mine = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
        query="launch code for project Nightingale", k=1), metadata=alice.metadata)
    assert mine.results[0].document == secret.name


@pytest.fixture(scope="module")
async def flaky() -> AsyncIterator[tuple[FakeEmbeddingsProvider, str]]:
    async with running_provider() as running:
        yield running


@pytest.fixture(scope="module")
def flaky_chroma(chroma: ChromaStore, data_dir: Path) -> ChromaStore:
    """The flaky server's store: a directory of its own, or the same Chroma server."""
    return chroma if chroma.host else ChromaStore(path=data_dir / "flaky" / "chroma")


@pytest.fixture(scope="module")
async def flaky_server(flaky, redis_server, data_dir, auth_address,
                       flaky_chroma: ChromaStore) -> AsyncIterator[MeshServer]:
    """A document service whose embeddings come from a remote provider we can break."""
    _, base_url = flaky
    models = [{"id": "remote", "provider": "openai", "dimension": DIMENSION,
               "base_url": base_url}]
    embedding = create_embedding_server(EmbeddingConfig.from_env(Env(mesh_env(
        redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
        LLMMESH_EMBEDDING_MODELS=json.dumps(models)))))
    embedding_port = await embedding.start()
    documents = create_document_server(DocumentConfig.from_env(Env(document_env(
        redis_server, data_dir / "flaky", auth_address, f"127.0.0.1:{embedding_port}",
        LLMMESH_DATA_DIR=str(data_dir / "flaky"), **flaky_chroma.env()))))
    await documents.start()
    yield documents
    await documents.stop(0)
    await embedding.stop(0)


@pytest.fixture(scope="module")
async def flaky_documents(flaky_server: MeshServer) -> AsyncIterator[
        document_pb2_grpc.DocumentServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{flaky_server.port}") as channel:
        yield document_pb2_grpc.DocumentServiceStub(channel)


LONG_TEXT = "\n\n".join(f"Section {i}. " + PARAGRAPHS[i % 3] * 4 for i in range(40))


async def test_a_failure_mid_ingestion_leaves_nothing(flaky, flaky_documents, auth_stub,
                                                      flaky_chroma) -> None:
    provider, _ = flaky
    provider.reset()
    provider.fail_after = 3  # three batches of 8 chunks stored, then the provider dies
    user = await register_and_login(auth_stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(flaky_documents, user, "long.txt", LONG_TEXT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "EMBEDDING_UNAVAILABLE"
    assert len(provider.requests) == 4
    assert await document_count(flaky_documents, user) == 0
    assert stored_chunks(flaky_chroma, user.user_id) == 0

    provider.reset()  # the provider recovers: the same upload now lands whole
    created = await upload(flaky_documents, user, "long.txt", LONG_TEXT)
    assert stored_chunks(flaky_chroma, user.user_id) == created.chunk_count > 24


async def test_failure_during_a_streamed_ingestion_is_the_last_event(
        flaky, flaky_documents, auth_stub, flaky_chroma) -> None:
    provider, _ = flaky
    provider.reset()
    provider.fail_after = 2
    user = await register_and_login(auth_stub)
    events = [e async for e in flaky_documents.IngestDocument(
        document_pb2.IngestDocumentRequest(
            source=document_pb2.DocumentSource(filename="long.txt"),
            content=LONG_TEXT.encode()), metadata=user.metadata)]
    assert events[-1].stage == document_pb2.INGEST_STAGE_FAILED
    assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "unavailable" in events[-1].error.message
    assert [e.embedded_chunks for e in events
            if e.stage == document_pb2.INGEST_STAGE_EMBEDDED] == [8, 16]
    assert stored_chunks(flaky_chroma, user.user_id) == 0
    assert await document_count(flaky_documents, user) == 0


async def test_a_client_that_cancels_mid_ingestion_leaves_nothing(
        flaky, flaky_server, flaky_documents, auth_stub, flaky_chroma) -> None:
    provider, _ = flaky
    provider.reset()
    provider.delay_seconds = 0.15
    user = await register_and_login(auth_stub)
    call = flaky_documents.IngestDocument(document_pb2.IngestDocumentRequest(
        source=document_pb2.DocumentSource(filename="long.txt"), content=LONG_TEXT.encode()),
        metadata=user.metadata)
    async for event in call:
        if event.stage == document_pb2.INGEST_STAGE_EMBEDDED and event.embedded_chunks >= 16:
            call.cancel()
            break
    requests_at_cancel = len(provider.requests)

    async def ingestions_in_flight() -> float | None:
        return flaky_server.metrics.registry.get_sample_value(
            "llmmesh_grpc_server_in_flight",
            {"grpc_service": "llmmesh.document.v1.DocumentService",
             "grpc_method": "IngestDocument"})

    await eventually(ingestions_in_flight, lambda count: count == 0,
                     what="the ingestion handler ending")
    assert len(provider.requests) <= requests_at_cancel + 1  # the pipeline stopped
    assert stored_chunks(flaky_chroma, user.user_id) == 0
    assert await document_count(flaky_documents, user) == 0
    provider.reset()
