"""UploadDocument (client streaming) with a message that is not protobuf answers
INVALID_ARGUMENT, never INTERNAL, and logs no ERROR."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from llmmesh.document.v1 import document_pb2

from tests.helpers import error_info, register_and_login

UPLOAD = "/llmmesh.document.v1.DocumentService/UploadDocument"
GARBAGE = b"\xff" * 16


def _source() -> bytes:
    return document_pb2.UploadDocumentRequest(source=document_pb2.DocumentSource(
        filename="notes.txt", collection="default")).SerializeToString()


async def _stream(*messages: bytes) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


@pytest.mark.parametrize("messages", [(GARBAGE,), (_source(), GARBAGE)],
                         ids=["first", "after-source"])
async def test_garbage_in_an_upload_is_invalid_argument(document_address, auth_stub, caplog,
                                                        messages: tuple[bytes, ...]) -> None:
    user = await register_and_login(auth_stub)
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(document_address) as channel:  # raw bytes
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.stream_unary(UPLOAD)(_stream(*messages), metadata=user.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "MALFORMED_REQUEST"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_garbage_upload_without_a_token(document_address, caplog) -> None:
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(document_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.stream_unary(UPLOAD)(_stream(GARBAGE))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
