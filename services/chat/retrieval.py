"""RAG retrieval through the document service's SearchDocuments, with the caller's
identity (the peer channel forwards their token). Embeddings for the extractive model
come from the shared services/runtime/embedding_client.py."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from services.chat.events import Source
from services.runtime.rpc_errors import from_peer

__all__ = ["DocumentSearch"]

MAX_QUERY_CHARS = 2000  # SearchDocuments' limit


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
