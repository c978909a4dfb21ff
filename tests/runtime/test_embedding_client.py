"""The shared embedding client over a fake channel (no sockets): batching, order, the
model asked for, and peer failures as domain errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from llmmesh.embedding.v1 import embedding_pb2

from services.runtime.embedding_client import EmbeddingClient
from services.runtime.errors import Internal, Unavailable

Answer = Callable[[embedding_pb2.EmbedRequest], embedding_pb2.EmbedResponse]


def _vectors(request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
    return embedding_pb2.EmbedResponse(embeddings=[
        embedding_pb2.Embedding(values=[float(len(text)), 1.0]) for text in request.texts])


class FakeChannel:
    """Answers Embed with `answer`; records every request."""

    def __init__(self, answer: Answer = _vectors) -> None:
        self.requests: list[embedding_pb2.EmbedRequest] = []
        self._answer = answer

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def call(request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
            assert method.endswith("/Embed")
            self.requests.append(request)
            return self._answer(request)

        return call


async def test_texts_go_in_batches_and_come_back_in_order() -> None:
    channel = FakeChannel()
    client = EmbeddingClient(channel, model="mini", batch_size=3)  # type: ignore[arg-type]
    texts = ["a" * n for n in range(1, 8)]
    vectors = await client.embed(texts)
    assert vectors == [[float(n), 1.0] for n in range(1, 8)]
    assert [list(r.texts) for r in channel.requests] == [texts[0:3], texts[3:6], texts[6:]]
    assert {r.model for r in channel.requests} == {"mini"}


async def test_nothing_to_embed_is_no_call() -> None:
    channel = FakeChannel()
    assert await EmbeddingClient(channel).embed([]) == []  # type: ignore[arg-type]
    assert channel.requests == []


async def test_a_peer_failure_is_a_domain_error() -> None:
    def down(request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details="connection refused")

    with pytest.raises(Unavailable) as caught:
        await EmbeddingClient(FakeChannel(down)).embed(["x"])  # type: ignore[arg-type]
    assert caught.value.reason == "EMBEDDING_UNAVAILABLE"
    assert caught.value.retry_after_seconds == 1.0


async def test_a_short_answer_is_caught() -> None:
    def short(request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
        return embedding_pb2.EmbedResponse(embeddings=[embedding_pb2.Embedding(values=[1.0])])

    with pytest.raises(Internal) as caught:
        await EmbeddingClient(FakeChannel(short)).embed(["x", "y"])  # type: ignore[arg-type]
    assert caught.value.reason == "EMBEDDING_BAD_RESPONSE"


def test_a_batch_holds_at_least_one_text() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingClient(FakeChannel(), batch_size=0)  # type: ignore[arg-type]
