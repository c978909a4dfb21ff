"""Builds the chat server: models, conversation store, peers, servicer."""

from __future__ import annotations

import grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.config import ChatConfig
from services.chat.conversations import ConversationStore
from services.chat.live_turns import TurnHub, TurnSettings
from services.chat.metrics import ChatMetrics
from services.chat.quota import QuotaClient
from services.chat.registry import ModelRegistry
from services.chat.retrieval import DocumentSearch
from services.chat.servicer import ChatServicer
from services.chat.turn_log import TurnLog
from services.chat.turns import ChatEngine
from services.runtime.authn import AccessPolicy
from services.runtime.embedding_client import EmbeddingClient
from services.runtime.jwks_client import remote_jwks_fetcher
from services.runtime.metrics import ServerMetrics
from services.runtime.peers import peer_channel
from services.runtime.redis_client import redis_client
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


def create_server(config: ChatConfig | None = None) -> MeshServer:
    """The chat server, unstarted (`await server.start()` returns the bound port)."""
    config = config or ChatConfig.from_env()
    runtime = config.runtime
    timeout = config.peer_timeout_seconds
    token = runtime.service_token.get_secret_value()
    auth = peer_channel(runtime.auth_address, token, default_timeout=timeout)
    documents = peer_channel(config.document_address, token, default_timeout=timeout)
    embeddings = peer_channel(config.embedding_address, token, default_timeout=timeout)
    redis = redis_client(runtime.redis_url, socket_timeout=runtime.redis_timeout_seconds)
    # The hot path's own channel to auth: plain, cheaper than the forwarding peer channel.
    quota_channel = grpc.aio.insecure_channel(runtime.auth_address)
    quota = QuotaClient(quota_channel, config.reservation_ttl_seconds, service_token=token,
                        timeout=timeout)
    metrics = ServerMetrics()
    chat_metrics = ChatMetrics(metrics.registry)
    engine = ChatEngine(
        ModelRegistry(config.models, config.default_model, EmbeddingClient(embeddings)),
        ConversationStore(redis, config.retention_seconds), quota, DocumentSearch(documents),
        history_turns=config.history_turns, max_message_chars=config.max_message_chars,
        on_charge=chat_metrics.charged)
    heartbeat = config.turn_heartbeat_seconds
    turns = TurnHub(engine, TurnLog(redis, config.resume_ttl_seconds, live_seconds=3 * heartbeat),
                    TurnSettings(resume_ttl_seconds=config.resume_ttl_seconds,
                                 disconnect_grace_seconds=config.disconnect_grace_seconds,
                                 heartbeat_seconds=heartbeat))

    def register(server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(engine, turns), server)

    async def close() -> None:
        # Turns still running once the calls drained (their callers gone, or cut at the
        # shutdown grace) are cancelled: charged what they generated, their logs ended.
        await turns.drain(runtime.shutdown_grace_seconds + 5.0)
        await quota.drain()
        for channel in (auth, quota_channel, documents, embeddings):
            await channel.close()
        await redis.aclose()

    spec = ServiceSpec(names=[SERVICE], register=register, policy=AccessPolicy.build(),
                       on_stop=[close])
    return MeshServer(runtime, spec, build_verifier(runtime, remote_jwks_fetcher(auth)),
                      metrics=metrics)


def main() -> None:
    """The chat service: `python -m services.chat`."""
    run_service(ChatConfig.from_env, create_server)
