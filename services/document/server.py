"""Builds the document server. Its RPCs answer UNIMPLEMENTED until the document issue lands."""

from __future__ import annotations

from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from services.runtime.config import RuntimeConfig
from services.runtime.placeholder import create_placeholder_server, run_placeholder
from services.runtime.server import MeshServer

SERVICE = document_pb2.DESCRIPTOR.services_by_name["DocumentService"].full_name


def create_server(config: RuntimeConfig | None = None) -> MeshServer:
    """The document server, unstarted."""
    return create_placeholder_server(
        "document", SERVICE, document_pb2_grpc.DocumentServiceServicer(),
        document_pb2_grpc.add_DocumentServiceServicer_to_server, config)


def main() -> None:
    run_placeholder("document", SERVICE, document_pb2_grpc.DocumentServiceServicer(),
                    document_pb2_grpc.add_DocumentServiceServicer_to_server)
