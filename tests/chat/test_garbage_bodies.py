"""Every method of every service answers a body that is not protobuf with
INVALID_ARGUMENT (MALFORMED_REQUEST) and logs no ERROR, for a caller with valid
credentials (a user's token and the service credential); client-streaming uploads are
covered in tests/document/test_malformed_bodies.py."""

from __future__ import annotations

import logging

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2, quota_pb2
from llmmesh.chat.v1 import chat_pb2
from llmmesh.document.v1 import document_pb2
from llmmesh.embedding.v1 import embedding_pb2

from tests.conftest import SERVICE_METADATA
from tests.helpers import LoggedIn, error_info

GARBAGE = b"\xff" * 16  # wire type 7 does not exist: no message decodes from this
SERVICES = {
    "auth": [auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
             quota_pb2.DESCRIPTOR.services_by_name["QuotaService"]],
    "chat": [chat_pb2.DESCRIPTOR.services_by_name["ChatService"]],
    "document": [document_pb2.DESCRIPTOR.services_by_name["DocumentService"]],
    "embedding": [embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"]],
}
METHODS = [(server, f"/{service.full_name}/{method.name}", method.server_streaming)
           for server, services in SERVICES.items() for service in services
           for method in service.methods if not method.client_streaming]


@pytest.fixture
def addresses(auth_address: str, chat_server, document_address: str,  # type: ignore[no-untyped-def]
              embedding_address: str) -> dict[str, str]:
    return {"auth": auth_address, "chat": f"127.0.0.1:{chat_server.port}",
            "document": document_address, "embedding": embedding_address}


@pytest.mark.parametrize(("server", "method", "streaming"), METHODS,
                         ids=[method for _, method, _ in METHODS])
async def test_garbage_is_invalid_argument_everywhere(
        addresses: dict[str, str], alice: LoggedIn, caplog: pytest.LogCaptureFixture,
        server: str, method: str, streaming: bool) -> None:
    caplog.set_level(logging.WARNING)
    metadata = (*alice.metadata, *SERVICE_METADATA)
    async with grpc.aio.insecure_channel(addresses[server]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if streaming:
                async for _ in channel.unary_stream(method)(GARBAGE, metadata=metadata,
                                                            timeout=10):
                    pass
            else:
                await channel.unary_unary(method)(GARBAGE, metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert error_info(caught.value).reason == "MALFORMED_REQUEST"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
