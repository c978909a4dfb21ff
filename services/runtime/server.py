"""Server bootstrap shared by every service: a grpc.aio server with the mesh
interceptor, gRPC health checking, server reflection, Prometheus metrics and a
graceful shutdown that lets in-flight calls (streams included) finish.

`run_service` serves in this process when the service runs one worker
(LLMMESH_<SERVICE>_WORKERS=1), else it supervises that many worker processes on one port
(services/runtime/workers.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime import tracing, workers
from services.runtime.authn import AccessPolicy, Authenticator, CredentialExchange
from services.runtime.config import RuntimeConfig
from services.runtime.credential_exchange import PeerCredentialExchange
from services.runtime.interceptor import MeshInterceptor
from services.runtime.jwt_verify import JwksCache, JwksFetcher, JwtVerifier
from services.runtime.load_shedding import ConcurrencyLimiter
from services.runtime.logs import configure_logging
from services.runtime.metrics import ServerMetrics

log = logging.getLogger("llmmesh.server")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ServiceSpec:
    """What a service contributes to its server."""

    names: Sequence[str]  # full gRPC service names, e.g. llmmesh.auth.v1.AuthService
    register: Callable[[grpc.aio.Server], None]
    policy: AccessPolicy
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build_verifier(config: RuntimeConfig, fetch: JwksFetcher) -> JwtVerifier:
    """A JWT verifier over a cached JWKS obtained with `fetch`."""
    keys = JwksCache(fetch, ttl=config.jwks_cache_seconds,
                     refetch_interval=config.jwks_refetch_interval_seconds)
    return JwtVerifier(keys, issuer=config.jwt_issuer, audience=config.jwt_audience,
                       leeway_seconds=config.jwt_leeway_seconds)


class MeshServer:
    """A service's server, built unstarted; `start()` binds and returns the port."""

    def __init__(self, config: RuntimeConfig, spec: ServiceSpec, verifier: JwtVerifier,
                 metrics: ServerMetrics | None = None,
                 exchange: CredentialExchange | None = None) -> None:
        self.config = config
        self.spec = spec
        self.metrics = metrics or ServerMetrics()
        # API keys and external tokens become our access tokens through auth (auth
        # passes its own in-process exchange).
        if exchange is None:
            peer = PeerCredentialExchange(config.auth_address,
                                          config.service_token.get_secret_value())
            spec.on_stop.append(peer.close)
            exchange = peer
        authenticator = Authenticator(verifier, config.service_token.get_secret_value(),
                                      spec.policy, exchange, issuer=config.jwt_issuer)
        self.stream_limiter = ConcurrencyLimiter(config.max_concurrent_streams)
        self._server = grpc.aio.server(
            interceptors=[MeshInterceptor(authenticator, self.metrics,
                                          stream_limiter=self.stream_limiter)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # A worker shares its port with its siblings (the kernel spreads the
                # connections); a lone process must own it, so a second one fails to bind.
                ("grpc.so_reuseport", int(config.worker_index is not None)),
            ],
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        spec.register(self._server)
        reflection.enable_server_reflection(
            [*spec.names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._serve_on_start = True

    def defer_serving(self) -> None:
        """Make `start` leave health NOT_SERVING until `mark_serving` (a worker waits for
        its siblings)."""
        self._serve_on_start = False

    async def start(self) -> int:
        """Bind, start serving, mark every service SERVING (unless `defer_serving` was
        called); returns the bound port."""
        serving = self._serve_on_start
        address = f"{self.config.listen_host}:{self.config.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await self._server.start()
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *self.spec.names]:
            await self._health.set(name, status)
        # A worker's metrics go to the multiprocess directory; its supervisor serves them.
        if self.config.metrics_port and self.config.worker_index is None:
            self.metrics_port = self.metrics.serve(self.config.listen_host,
                                                   self.config.metrics_port)
        log.info("serving" if serving else "started",
                 extra={"address": f"{self.config.listen_host}:{self.port}",
                        "services": list(self.spec.names), "metrics_port": self.metrics_port})
        return self.port

    async def mark_serving(self) -> None:
        """Health SERVING for every service (after `defer_serving` and `start`)."""
        if self._stopped.is_set():
            return
        for name in ["", *self.spec.names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Say NOT_SERVING, then refuse new calls and let in-flight ones finish within
        `grace` seconds, then run the service's cleanups. Without an explicit `grace`
        (a signal), new calls are still served for the configured drain delay after
        health turns NOT_SERVING: a health-checking balancer (Envoy) takes this process
        out of rotation before its listener closes, so no call sent meanwhile is reset."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        drain = self.config.drain_delay_seconds if grace is None else 0.0
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        log.info("stopping", extra={"grace_seconds": grace, "drain_delay_seconds": drain})
        await self._health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        await self._server.stop(grace)
        for cleanup in self.spec.on_stop:
            await cleanup()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


ServerBuild = Callable[[], MeshServer | Awaitable[MeshServer]]


class ServiceConfig(Protocol):
    """A service's config object: whatever it holds, it carries the shared settings."""

    @property
    def runtime(self) -> RuntimeConfig: ...


Config = TypeVar("Config", bound=ServiceConfig)


def run_service(load: Callable[[], Config],
                create: Callable[[Config], MeshServer | Awaitable[MeshServer]]) -> None:
    """A service's `main()`: read its config, log JSON at its level, then serve what
    `create` builds (inside the event loop; a coroutine may load models first) until
    SIGTERM or SIGINT. Traces are exported as the OTEL_* variables say (off without an
    exporter: services/runtime/tracing.py).

    With LLMMESH_<SERVICE>_WORKERS above one, this process supervises that many workers
    (this same command, run again) on one port instead, and exits with the supervisor's
    status (services/runtime/workers.py); a worker serves as above, linked to it.
    """
    config = load()
    runtime = config.runtime
    configure_logging(runtime.service, runtime.log_level)
    if runtime.workers > 1 and runtime.worker_index is None:
        sys.exit(workers.supervise(runtime))  # the workers trace, each its own exporter
    tracing.configure(runtime.service)  # OTEL_* variables; off without an exporter
    try:
        if runtime.worker_index is not None:
            workers.label_logs(runtime.worker_index)
            link = workers.SupervisorLink.from_config(runtime)
            asyncio.run(serve_until_signalled(lambda: create(config), link=link))
        else:
            asyncio.run(serve_until_signalled(lambda: create(config)))
    finally:
        tracing.shutdown()  # export the spans still buffered


class Link(Protocol):
    """A worker's tie to its supervisor (services/runtime/workers.py)."""

    async def attach(self, server: MeshServer, stop: Callable[[], None]) -> None: ...


async def serve_until_signalled(build: ServerBuild, link: Link | None = None) -> None:
    """Build a server inside the running loop (grpc.aio binds to it), start it and run
    until SIGTERM or SIGINT, then stop it gracefully.

    The signal handlers come first: a SIGTERM while the server builds or starts stops it
    gracefully as soon as it has started, instead of killing the process.

    With a `link` (a worker), the server starts NOT_SERVING and the link marks it SERVING
    once the supervisor says every worker is up; losing the supervisor stops it.
    """
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stopping.done():
            stopping.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    built = build()
    server = await built if inspect.isawaitable(built) else built
    if link is None:
        await server.start()
    else:
        server.defer_serving()
        await server.start()
        await link.attach(server, request_stop)
    await stopping
    await server.stop()
