"""Builds the embedding server: loads the configured models, then serves them."""

from __future__ import annotations

import asyncio

import grpc
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.embedding.config import EmbeddingConfig
from services.embedding.models import load_model
from services.embedding.registry import ModelRegistry
from services.embedding.servicer import EmbeddingServicer
from services.runtime.authn import AccessPolicy
from services.runtime.jwks_client import remote_jwks_fetcher
from services.runtime.peers import peer_channel
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service

SERVICE = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


def create_server(config: EmbeddingConfig, registry: ModelRegistry | None = None) -> MeshServer:
    """The embedding server, unstarted. Loading the local model takes a few seconds."""
    runtime = config.runtime
    registry = registry or build_registry(config)
    auth_channel = peer_channel(runtime.auth_address, runtime.service_token.get_secret_value())

    def register(server: grpc.aio.Server) -> None:
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(registry), server)

    async def close() -> None:
        await registry.close()
        await auth_channel.close()

    spec = ServiceSpec(names=[SERVICE], register=register, policy=AccessPolicy.build(),
                       on_stop=[close])
    return MeshServer(runtime, spec, build_verifier(runtime, remote_jwks_fetcher(auth_channel)))


def build_registry(config: EmbeddingConfig) -> ModelRegistry:
    return ModelRegistry([load_model(spec, config) for spec in config.models],
                         config.default_model, max_texts=config.max_texts_per_call,
                         max_chars=config.max_chars_per_text)


def main() -> None:
    """The embedding service: `python -m services.embedding`."""
    run_service(EmbeddingConfig.from_env, create_loaded_server)


async def create_loaded_server(config: EmbeddingConfig) -> MeshServer:
    """The server once its models are loaded: seconds of CPU, in a thread, before binding."""
    registry = await asyncio.to_thread(build_registry, config)
    return create_server(config, registry)
