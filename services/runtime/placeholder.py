"""A server for a service whose RPCs are not built yet: it starts, verifies tokens,
answers health and reflection, and its RPCs answer UNIMPLEMENTED."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from services.runtime.authn import AccessPolicy
from services.runtime.config import RuntimeConfig
from services.runtime.jwks_client import remote_jwks_fetcher
from services.runtime.peers import peer_channel
from services.runtime.server import MeshServer, ServiceSpec, build_verifier


def create_placeholder_server(service: str, full_name: str, servicer: Any,
                              add: Callable[[Any, grpc.aio.Server], None],
                              config: RuntimeConfig | None = None) -> MeshServer:
    """A server whose servicer is the generated base class (every RPC UNIMPLEMENTED)."""
    config = config or RuntimeConfig.from_env(service)
    auth_channel = peer_channel(config.auth_address, config.service_token)

    async def close() -> None:
        await auth_channel.close()

    spec = ServiceSpec(names=[full_name], register=lambda server: add(servicer, server),
                       policy=AccessPolicy.build(), on_stop=[close])
    return MeshServer(config, spec, build_verifier(config, remote_jwks_fetcher(auth_channel)))


def run_placeholder(service: str, full_name: str, servicer: Any,
                    add: Callable[[Any, grpc.aio.Server], None]) -> None:
    from services.runtime.logs import configure_logging
    from services.runtime.server import serve_until_signalled

    config = RuntimeConfig.from_env(service)
    configure_logging(service, config.log_level)

    asyncio.run(serve_until_signalled(
        lambda: create_placeholder_server(service, full_name, servicer, add, config)))
