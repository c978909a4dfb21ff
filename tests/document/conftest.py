"""Document tests run twice: over embedded Chroma and over a real Chroma server process.

`chroma` is a session fixture with two parameters; the document server (here, overriding
the session-wide one of tests/conftest.py) and every test that stores chunks depend on
it, so pytest runs each of them once per mode, grouped by mode (one document server, one
Chroma server at a time). Tests that touch no document server run once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from llmmesh.document.v1 import document_pb2_grpc

from mesh.chroma_server import LocalChroma
from mesh.redis_server import LocalRedis
from services.document.config import DocumentConfig
from services.document.server import create_server as create_document_server
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import document_env
from tests.document.helpers import ChromaStore


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalChroma]:
    """A real `chroma run` server on a free 127.0.0.1 port (started for server mode only)."""
    server = LocalChroma(tmp_path_factory.mktemp("chroma-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["embedded", "server"])
def chroma(request: pytest.FixtureRequest, data_dir: Path) -> ChromaStore:
    """The store the document servers of this directory use: each test runs per mode."""
    if request.param == "server":
        server: LocalChroma = request.getfixturevalue("chroma_server")
        return ChromaStore(host=server.address)
    # Not the session's data_dir/chroma: that is the store of tests/conftest.py's own
    # document server, which other packages may have started already.
    return ChromaStore(path=data_dir / "chroma-documents")


@pytest.fixture(scope="session")
async def document_server(redis_server: LocalRedis, data_dir: Path, auth_address: str,
                          embedding_address: str,
                          chroma: ChromaStore) -> AsyncIterator[MeshServer]:
    """The document service over `chroma` (embedded in the session's data dir, or the
    Chroma server)."""
    env = document_env(redis_server, data_dir, auth_address, embedding_address,
                       **chroma.env())
    server = create_document_server(DocumentConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


# Overridden as well: tests/conftest.py's session-scoped ones may already be bound to its
# own (embedded) document server when another package ran first.
@pytest.fixture(scope="session")
def document_address(document_server: MeshServer) -> str:
    return f"127.0.0.1:{document_server.port}"


@pytest.fixture(scope="session")
async def document_stub(document_address: str) -> AsyncIterator[
        document_pb2_grpc.DocumentServiceStub]:
    async with grpc.aio.insecure_channel(document_address) as channel:
        yield document_pb2_grpc.DocumentServiceStub(channel)
