"""Builds the rate limit service's server: MeshServer (health, reflection, metrics,
graceful shutdown) around the RateLimitService servicer.

ShouldRateLimit is public at the interceptor: Envoy's ratelimit filter sends no
credentials. The service is reachable only inside the deployment (127.0.0.1 locally,
not published by docker-compose).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from gateway.config import RateLimitServiceConfig
from gateway.ratelimit.counter import BatchedCounter
from gateway.ratelimit.limiter import FixedWindowLimiter
from gateway.ratelimit.rules import RateLimitRules
from gateway.ratelimit.servicer import RateLimitServicer
from services.runtime.authn import AccessPolicy, service_methods
from services.runtime.jwt_verify import JwksCache, JwtVerifier
from services.runtime.redis_client import redis_client
from services.runtime.server import MeshServer, ServiceSpec

SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
POLICY = AccessPolicy.build(public=service_methods(SERVICE, ["ShouldRateLimit"]))


def create_server(config: RateLimitServiceConfig) -> MeshServer:
    """The rate limit server, unstarted (`await server.start()` returns the port)."""
    rules = RateLimitRules.load(config.rules_path)
    redis = redis_client(config.runtime.redis_url,  # one server or a cluster
                         socket_timeout=config.redis_timeout_seconds,
                         socket_connect_timeout=config.redis_timeout_seconds,
                         health_check_interval=0)
    counter = BatchedCounter(redis)
    limiter = FixedWindowLimiter(counter, rules, prefix=config.key_prefix)
    servicer = RateLimitServicer(limiter, config.redis_failure)

    def register(server: grpc.aio.Server) -> None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await counter.drain()
        await redis.aclose()

    async def no_keys() -> dict[str, Any]:
        return {"keys": []}  # no method here takes a user token

    verifier = JwtVerifier(JwksCache(no_keys), issuer=config.runtime.jwt_issuer,
                           audience=config.runtime.jwt_audience)
    spec = ServiceSpec(names=[SERVICE], register=register, policy=POLICY, on_stop=[close])
    return MeshServer(config.runtime, spec, verifier)


def main() -> None:
    from services.runtime import tracing
    from services.runtime.logs import configure_logging
    from services.runtime.server import serve_until_signalled

    config = RateLimitServiceConfig.from_env()
    configure_logging("ratelimit", config.runtime.log_level)
    tracing.configure("ratelimit")  # OTEL_* variables; off without an exporter
    try:
        asyncio.run(serve_until_signalled(lambda: create_server(config)))
    finally:
        tracing.shutdown()
