"""Builds the embedding server. Its RPCs answer UNIMPLEMENTED until the embedding issue lands."""

from __future__ import annotations

from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.runtime.config import RuntimeConfig
from services.runtime.placeholder import create_placeholder_server, run_placeholder
from services.runtime.server import MeshServer

SERVICE = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


def create_server(config: RuntimeConfig | None = None) -> MeshServer:
    """The embedding server, unstarted."""
    return create_placeholder_server(
        "embedding", SERVICE, embedding_pb2_grpc.EmbeddingServiceServicer(),
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server, config)


def main() -> None:
    run_placeholder("embedding", SERVICE, embedding_pb2_grpc.EmbeddingServiceServicer(),
                    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server)
