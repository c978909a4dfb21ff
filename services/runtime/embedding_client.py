"""The one client of the embedding service, for the services that need vectors
(chat's extractive model, document ingestion and search).

It lives in the runtime, like jwks_client.py for auth, so no service imports another:
it needs only the API package and a peer channel (identity and deadline forwarded)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.runtime.errors import Internal
from services.runtime.rpc_errors import from_peer

PEER = "embedding"
MAX_TEXTS_PER_CALL = 256  # Embed's default limit (LLMMESH_EMBEDDING_MAX_TEXTS)


class EmbeddingClient:
    """Vectors from EmbeddingService.Embed, in calls of at most `batch_size` texts."""

    def __init__(self, channel: grpc.aio.Channel, model: str = "",
                 batch_size: int = MAX_TEXTS_PER_CALL) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._model = model  # "" = the embedding service's default
        self._batch_size = batch_size

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; peer failures as our domain errors."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start:start + self._batch_size])
            try:
                answer = await self._stub.Embed(
                    embedding_pb2.EmbedRequest(texts=batch, model=self._model))
            except grpc.aio.AioRpcError as error:
                raise from_peer(error, PEER) from None
            if len(answer.embeddings) != len(batch):
                raise Internal(f"embedding returned {len(answer.embeddings)} vectors for "
                               f"{len(batch)} texts", reason="EMBEDDING_BAD_RESPONSE")
            vectors.extend(list(e.values) for e in answer.embeddings)
        return vectors
