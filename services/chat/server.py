"""Builds the chat server. Its RPCs answer UNIMPLEMENTED until the chat issue lands."""

from __future__ import annotations

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.runtime.config import RuntimeConfig
from services.runtime.placeholder import create_placeholder_server, run_placeholder
from services.runtime.server import MeshServer

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


def create_server(config: RuntimeConfig | None = None) -> MeshServer:
    """The chat server, unstarted."""
    return create_placeholder_server(
        "chat", SERVICE, chat_pb2_grpc.ChatServiceServicer(),
        chat_pb2_grpc.add_ChatServiceServicer_to_server, config)


def main() -> None:
    run_placeholder("chat", SERVICE, chat_pb2_grpc.ChatServiceServicer(),
                    chat_pb2_grpc.add_ChatServiceServicer_to_server)
