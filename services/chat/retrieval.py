"""RAG retrieval through the document service's SearchDocuments, with the caller's
identity (the peer channel forwards their token), and embeddings through the
embedding service's Embed for the extractive model."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.chat.events import Source
from services.chat.peer_errors import from_peer

MAX_QUERY_CHARS = 2000  # SearchDocuments' limit
EMBED_BATCH = 256  # Embed's default per-call limit


class DocumentSearch:
    """The caller's most relevant chunks for a question."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = document_pb2_grpc.DocumentServiceStub(channel)

    async def search(self, question: str, *, k: int, collection: str,
                     documents: Sequence[str]) -> list[Source]:
        request = document_pb2.SearchDocumentsRequest(
            query=question[:MAX_QUERY_CHARS], k=k, collection=collection,
            documents=list(documents))
        try:
            answer = await self._stub.SearchDocuments(request)
        except grpc.aio.AioRpcError as error:
            raise from_peer(error, "document", field_prefix="options.") from None
        return [Source(document=r.document, filename=r.filename, chunk_index=r.chunk_index,
                       score=r.score, text=r.text) for r in answer.results]


class RemoteEmbedder:
    """Vectors for texts from the embedding service (the default model)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = list(texts[start:start + EMBED_BATCH])
            try:
                answer = await self._stub.Embed(embedding_pb2.EmbedRequest(texts=batch))
            except grpc.aio.AioRpcError as error:
                raise from_peer(error, "embedding") from None
            vectors.extend(list(e.values) for e in answer.embeddings)
        return vectors
