"""Server mode only: a Chroma server that is down (not started yet, or stopped mid-way)
makes the document service answer UNAVAILABLE (retryable, STORAGE_UNAVAILABLE) rather than
INTERNAL, commits nothing, and recovers by itself once the server is back.

The rest of tests/document runs against both embedded Chroma and a Chroma server (see
conftest.py); this module has a Chroma server of its own, which it stops and restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from mesh.chroma_server import LocalChroma, free_port
from services.document.config import DocumentConfig
from services.document.server import create_server as create_document_server
from services.runtime.config import ConfigError, Env
from services.runtime.server import MeshServer
from tests.conftest import document_env
from tests.document.helpers import PARAGRAPHS, ChromaStore, document_count, stored_chunks, upload
from tests.helpers import error_info, register_and_login, rich_status


@pytest.fixture(scope="module")
def chroma_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalChroma]:
    """A Chroma server on a port of its own, not started yet."""
    server = LocalChroma(tmp_path_factory.mktemp("chroma-outage"), port=free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def outage_server(chroma_down: LocalChroma, redis_server, data_dir, auth_address,  # type: ignore[no-untyped-def]
                        embedding_address) -> AsyncIterator[MeshServer]:
    env = document_env(redis_server, data_dir, auth_address, embedding_address,
                       LLMMESH_CHROMA_HOST=chroma_down.address)
    server = create_document_server(DocumentConfig.from_env(Env(env)))
    await server.start()  # Chroma is not up: the service starts all the same
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
async def outage_stub(outage_server: MeshServer) -> AsyncIterator[
        document_pb2_grpc.DocumentServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{outage_server.port}") as channel:
        yield document_pb2_grpc.DocumentServiceStub(channel)


async def _search(stub, user, query: str = "tides and the Moon"):  # type: ignore[no-untyped-def]
    return await stub.SearchDocuments(document_pb2.SearchDocumentsRequest(query=query, k=3),
                                      metadata=user.metadata)


def _assert_unavailable(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> None:
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info.reason == "STORAGE_UNAVAILABLE" and info.metadata["storage"] == "chroma"
    retry = error_details_pb2.RetryInfo.DESCRIPTOR
    assert any(detail.Is(retry) for detail in rich_status(caught.value).details)


async def test_a_chroma_server_down_answers_unavailable_and_recovery_needs_no_restart(
        chroma_down: LocalChroma, outage_stub, auth_stub) -> None:
    user = await register_and_login(auth_stub)
    store = ChromaStore(host=chroma_down.address)

    # Not started yet: the service is up, its calls are UNAVAILABLE, nothing is committed.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _search(outage_stub, user)
    _assert_unavailable(caught)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(outage_stub, user, "early.txt", PARAGRAPHS[0])
    _assert_unavailable(caught)
    assert await document_count(outage_stub, user) == 0

    chroma_down.start()
    kept = await upload(outage_stub, user, "tides.txt", PARAGRAPHS[0])
    before = await _search(outage_stub, user)
    assert before.results[0].document == kept.name

    # Stopped mid-way: searches and uploads are UNAVAILABLE; the failed upload leaves no
    # record, and its chunks (none could be written) nothing in Chroma.
    chroma_down.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _search(outage_stub, user)
    _assert_unavailable(caught)
    events = [e async for e in outage_stub.IngestDocument(document_pb2.IngestDocumentRequest(
        source=document_pb2.DocumentSource(filename="during.txt"),
        content="\n\n".join(PARAGRAPHS * 4).encode()), metadata=user.metadata)]
    assert events[-1].stage == document_pb2.INGEST_STAGE_FAILED
    assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]

    # Back on the same port and files: the same client carries on.
    chroma_down.restart()
    assert await _search(outage_stub, user) == before
    assert await document_count(outage_stub, user) == 1
    assert stored_chunks(store, user.user_id) == kept.chunk_count


@pytest.mark.parametrize("value", ["chroma", "chroma:", "chroma:http", ":8000",
                                   "http://chroma:8000", "chroma:70000"])
def test_a_malformed_chroma_host_is_a_config_error(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LLMMESH_CHROMA_HOST"):
        DocumentConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path),
                                     "LLMMESH_SERVICE_TOKEN": "t" * 40,
                                     "LLMMESH_CHROMA_HOST": value}))
