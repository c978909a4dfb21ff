"""Shared fixtures: a real Redis server, a real auth server over a socket, stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2_grpc, quota_pb2_grpc
from llmmesh.document.v1 import document_pb2_grpc
from llmmesh.embedding.v1 import embedding_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.redis_server import LocalRedis
from services.auth.config import AuthConfig
from services.auth.server import create_server
from services.document.config import DocumentConfig
from services.document.server import create_server as create_document_server
from services.embedding.config import EmbeddingConfig
from services.embedding.server import create_server as create_embedding_server
from services.runtime import tracing
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.helpers import LoggedIn, register_and_login

SERVICE_TOKEN = "test-service-token-" + "x" * 32


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def mesh_env(redis_server: LocalRedis, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for in-process servers: ephemeral ports, no metrics, fast bcrypt."""
    env = {
        "LLMMESH_DATA_DIR": str(data_dir),
        "LLMMESH_REDIS_URL": redis_server.url,
        "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
        "LLMMESH_AUTH_BCRYPT_COST": "4",
        "LLMMESH_SHUTDOWN_GRACE_SECONDS": "1",
    }
    for service in ("auth", "chat", "document", "embedding"):
        env[f"LLMMESH_{service.upper()}_PORT"] = "0"
        env[f"LLMMESH_{service.upper()}_METRICS_PORT"] = "0"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
async def auth_server(redis_server: LocalRedis, data_dir: Path) -> AsyncIterator[MeshServer]:
    server = create_server(AuthConfig.from_env(Env(mesh_env(redis_server, data_dir))))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def auth_address(auth_server: MeshServer) -> str:
    return f"127.0.0.1:{auth_server.port}"


@pytest.fixture(scope="session")
async def auth_channel(auth_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(auth_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def auth_stub(auth_channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(auth_channel)


@pytest.fixture(scope="session")
def quota_stub(auth_channel: grpc.aio.Channel) -> quota_pb2_grpc.QuotaServiceStub:
    return quota_pb2_grpc.QuotaServiceStub(auth_channel)


@pytest.fixture(scope="session")
async def embedding_server(redis_server: LocalRedis, data_dir: Path,
                           auth_address: str) -> AsyncIterator[MeshServer]:
    """The embedding service with the real local model (loads once per session)."""
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address)
    server = create_embedding_server(EmbeddingConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def embedding_address(embedding_server: MeshServer) -> str:
    return f"127.0.0.1:{embedding_server.port}"


@pytest.fixture(scope="session")
async def embedding_stub(embedding_address: str) -> AsyncIterator[
        embedding_pb2_grpc.EmbeddingServiceStub]:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)


def document_env(redis_server: LocalRedis, data_dir: Path, auth_address: str,
                 embedding_address: str, **extra: str) -> dict[str, str]:
    """Small embedding batches, so tests see ingestion progress batch by batch."""
    return mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                    LLMMESH_EMBEDDING_ADDRESS=embedding_address,
                    **{"LLMMESH_DOCUMENT_EMBED_BATCH_SIZE": "8", **extra})


@pytest.fixture(scope="session")
async def document_server(redis_server: LocalRedis, data_dir: Path, auth_address: str,
                          embedding_address: str) -> AsyncIterator[MeshServer]:
    """The document service over embedded Chroma in the session's data dir."""
    env = document_env(redis_server, data_dir, auth_address, embedding_address)
    server = create_document_server(DocumentConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def document_address(document_server: MeshServer) -> str:
    return f"127.0.0.1:{document_server.port}"


@pytest.fixture(scope="session")
async def document_stub(document_address: str) -> AsyncIterator[
        document_pb2_grpc.DocumentServiceStub]:
    async with grpc.aio.insecure_channel(document_address) as channel:
        yield document_pb2_grpc.DocumentServiceStub(channel)


@pytest.fixture
def traces() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, every in-process service's spans kept in memory (the
    services read the tracer at each call: no global provider is set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture
async def alice(auth_stub: auth_pb2_grpc.AuthServiceStub) -> LoggedIn:
    return await register_and_login(auth_stub)


SERVICE_METADATA = (("x-llmmesh-service-token", SERVICE_TOKEN),)
