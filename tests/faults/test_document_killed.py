"""Faults: the document service SIGKILLed mid-ingestion of a large document (a real
process; auth and embedding too, the embeddings from an OpenAI-compatible stand-in that
is slow enough to kill it half-way). Restarted on the same data: the uncommitted document
is not listed, its chunks are still in Chroma (the janitor only sweeps old ones), and a
search with k=10 still returns 10 committed results although the orphans outnumber the
committed chunks many times (search widens past them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2_grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from mesh.redis_server import LocalRedis
from tests.document.helpers import PARAGRAPHS, ChromaStore, stored_chunks, upload
from tests.fake_embeddings_provider import DIMENSION, FakeEmbeddingsProvider, running_provider
from tests.faults.processes import ServiceProcess, process_env
from tests.helpers import LoggedIn, register_and_login

CHUNK_SIZE = 200
BATCH = 8
# ~160-character sections: one chunk each.
LARGE = "\n\n".join(f"Section {n} of the large manual. " + PARAGRAPHS[n % 3][:120]
                    for n in range(400))
KILL_AFTER_CHUNKS = 120


@dataclass
class DocumentMesh:
    provider: FakeEmbeddingsProvider
    auth: ServiceProcess
    document: ServiceProcess
    data_dir: Path
    auth_stub: auth_pb2_grpc.AuthServiceStub


@pytest.fixture
async def document_mesh(tmp_path: Path) -> AsyncIterator[DocumentMesh]:
    redis = LocalRedis(tmp_path / "redis", persistent=False)
    processes: list[ServiceProcess] = []
    redis.start()
    try:
        async with running_provider() as (provider, base_url):
            models = [{"id": "remote", "provider": "openai", "dimension": DIMENSION,
                       "base_url": base_url}]
            env = process_env(tmp_path / "data", redis.url,
                              LLMMESH_EMBEDDING_MODELS=json.dumps(models),
                              LLMMESH_DOCUMENT_CHUNK_SIZE=str(CHUNK_SIZE),
                              LLMMESH_DOCUMENT_CHUNK_OVERLAP="0",
                              LLMMESH_DOCUMENT_EMBED_BATCH_SIZE=str(BATCH))
            auth, embedding, document = (ServiceProcess(name, env, tmp_path / "logs")
                                         for name in ("auth", "embedding", "document"))
            processes += [auth, embedding, document]
            await asyncio.gather(auth.start(), embedding.start())
            await document.start()
            async with grpc.aio.insecure_channel(auth.address) as channel:
                yield DocumentMesh(provider, auth, document, tmp_path / "data",
                                   auth_pb2_grpc.AuthServiceStub(channel))
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()


async def _ingest_until_killed(stub: document_pb2_grpc.DocumentServiceStub, user: LoggedIn,
                               document: ServiceProcess) -> int:
    """Stream the large upload's progress; SIGKILL the service once KILL_AFTER_CHUNKS
    chunks are stored. How many chunks the stream last reported stored."""
    embedded = 0
    call = stub.IngestDocument(document_pb2.IngestDocumentRequest(
        source=document_pb2.DocumentSource(filename="large-manual.txt"),
        content=LARGE.encode()), metadata=user.metadata, timeout=60)
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        async for progress in call:
            assert progress.stage != document_pb2.INGEST_STAGE_DONE, "finished before the kill"
            assert not progress.HasField("error"), progress
            embedded = progress.embedded_chunks
            if embedded >= KILL_AFTER_CHUNKS:
                document.kill()
    assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    return embedded


async def test_a_killed_ingestion_is_not_listed_and_does_not_crowd_out_search(
        document_mesh: DocumentMesh) -> None:
    mesh = document_mesh
    mesh.provider.delay_seconds = 0.05  # per batch of 8: the large upload takes ~3 s
    user = await register_and_login(mesh.auth_stub)
    async with grpc.aio.insecure_channel(mesh.document.address) as channel:
        stub = document_pb2_grpc.DocumentServiceStub(channel)
        kept = [await upload(stub, user, f"notes-{n}.txt", "\n\n".join(
            f"Note {n}.{i}: " + PARAGRAPHS[i % 3][:120] for i in range(8))) for n in range(2)]
        committed_chunks = sum(d.chunk_count for d in kept)
        assert committed_chunks >= 12
        embedded = await _ingest_until_killed(stub, user, mesh.document)

    await mesh.document.start()  # the same data dir, Redis and Chroma
    orphans = (stored_chunks(ChromaStore(path=mesh.data_dir / "chroma"), user.user_id)
               - committed_chunks)
    assert orphans >= embedded >= KILL_AFTER_CHUNKS  # left behind, none committed
    async with grpc.aio.insecure_channel(mesh.document.address) as channel:
        stub = document_pb2_grpc.DocumentServiceStub(channel)
        listed = await stub.ListDocuments(document_pb2.ListDocumentsRequest(page_size=100),
                                          metadata=user.metadata)
        assert {d.name for d in listed.documents} == {d.name for d in kept}
        for query in ("Section 7 of the large manual", "ocean tides", "bicycle chain"):
            found = await stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
                query=query, k=10), metadata=user.metadata, timeout=30)
            assert len(found.results) == 10, (query, orphans, [r.document for r in found.results])
            assert {r.document for r in found.results} <= {d.name for d in kept}
