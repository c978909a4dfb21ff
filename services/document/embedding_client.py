"""Embedding chunks and queries through the embedding service, as the calling user."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.runtime.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable


class EmbeddingClient:
    """Calls EmbeddingService.Embed over a peer channel (identity and deadline forwarded)."""

    def __init__(self, channel: grpc.aio.Channel, model: str = "") -> None:
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._model = model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            answer = await self._stub.Embed(
                embedding_pb2.EmbedRequest(texts=list(texts), model=self._model))
        except grpc.aio.AioRpcError as error:
            raise _mapped(error) from None
        return [list(e.values) for e in answer.embeddings]


def _mapped(error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    metadata = {"embedding_code": code.name}
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted("the embedding service is over capacity",
                                 reason="EMBEDDING_EXHAUSTED", retry_after_seconds=1.0,
                                 metadata=metadata)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("embedding took too long", reason="EMBEDDING_TIMEOUT",
                                metadata=metadata)
    if code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}:
        return Unavailable("the embedding service is unavailable",
                           reason="EMBEDDING_UNAVAILABLE", retry_after_seconds=1.0,
                           metadata=metadata)
    return Internal(f"embedding failed ({code.name})", reason="EMBEDDING_FAILED",
                    metadata=metadata)
