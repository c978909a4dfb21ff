"""gRPC transport for the embedding service."""

from __future__ import annotations

import grpc
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.embedding.registry import ModelRegistry
from services.runtime import tracing
from services.runtime.paging import paginate


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def Embed(self, request: embedding_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext[
                        embedding_pb2.EmbedRequest, embedding_pb2.EmbedResponse]
                    ) -> embedding_pb2.EmbedResponse:
        model = request.model or self._registry.default_model
        with tracing.span(f"embeddings {model}",
                          tracing.model_attributes("embeddings", "llmmesh", model)) as span:
            result = await self._registry.embed(list(request.texts), request.model)
            if span.is_recording():
                span.set_attribute(tracing.GEN_AI_PROVIDER, result.model.provider)
                span.set_attribute(tracing.GEN_AI_SYSTEM, result.model.provider)
                span.set_attribute(tracing.GEN_AI_RESPONSE_MODEL, result.model.model_id)
                span.set_attribute(tracing.GEN_AI_EMBEDDING_DIMENSIONS, result.model.dimension)
                tracing.record_usage(span, result.embedded.tokens)
        return embedding_pb2.EmbedResponse(
            embeddings=[embedding_pb2.Embedding(values=v) for v in result.embedded.vectors],
            model=result.model.model_id,
            dimension=result.model.dimension,
            usage=embedding_pb2.EmbeddingUsage(texts=len(request.texts),
                                               characters=result.characters,
                                               tokens=result.embedded.tokens))

    async def ListEmbeddingModels(
            self, request: embedding_pb2.ListEmbeddingModelsRequest,
            context: grpc.aio.ServicerContext[
                embedding_pb2.ListEmbeddingModelsRequest,
                embedding_pb2.ListEmbeddingModelsResponse]
            ) -> embedding_pb2.ListEmbeddingModelsResponse:
        models = sorted(self._registry.models(), key=lambda m: m.model_id)
        page = paginate(models, request, "embeddingModels", default=50, maximum=100)
        return embedding_pb2.ListEmbeddingModelsResponse(
            embedding_models=[embedding_pb2.EmbeddingModel(
                name=f"embeddingModels/{m.model_id}", model_id=m.model_id,
                dimension=m.dimension, provider=m.provider,
                default=m.model_id == self._registry.default_model) for m in page.items],
            next_page_token=page.next_page_token)
