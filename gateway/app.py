"""The Python edge: an aiohttp server doing, per request, what Envoy's filter chain does
(see gateway/envoy_config.py): CORS, strip client identity headers, JWT check, rate
limit, REST->gRPC transcoding, and the answer mapped back to HTTP.

It serves REST only; gRPC clients call the services directly in a local run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

import grpc
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.config import EdgeConfig
from gateway.cors import Cors
from gateway.descriptors import build_pool, edge_descriptor_set, load_descriptor_set
from gateway.jwt_check import EdgeJwt, JwtFailure
from gateway.ratelimit_client import RateLimitClient, descriptors_for
from gateway.routes import RouteTable
from gateway.spec import EdgeSpec
from gateway.status import local_reply
from gateway.transcode import TranscodeError, build_requests, parse_query
from gateway.upstream import Upstreams
from services.runtime.jwks_client import remote_jwks_fetcher
from services.runtime.jwt_verify import JwtVerifier, VerifiedToken
from services.runtime.server import MAX_MESSAGE_BYTES, build_verifier

log = logging.getLogger("llmmesh.edge")

TOO_LARGE = ("Request rejected because the transcoder's internal buffer size exceeds the "
             "configured limit.")
# Not forwarded as gRPC metadata: hop-by-hop, framing, or set by the gRPC client itself.
_NOT_FORWARDED = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
                  "upgrade", "te", "trailer", "content-length", "content-type",
                  "accept-encoding", "user-agent", "x-request-id", "x-forwarded-for"}


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def upstream_metadata(headers: CIMultiDictProxy[str], identity: frozenset[str],
                      token: VerifiedToken | None, user_id_header: str, request_id: str,
                      remote: str | None,
                      added: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers as gRPC metadata, minus identity headers it may not set,
    plus the verified user id, request id and forwarding headers."""
    metadata = []
    for key, value in headers.items():
        name = key.lower()
        if (name in _NOT_FORWARDED or name in identity or name.startswith(("grpc-", ":"))
                or name.endswith("-bin") or not value.isascii() or not value.isprintable()):
            continue
        metadata.append((name, value))
    forwarded = headers.get("x-forwarded-for")
    if remote:
        forwarded = f"{forwarded}, {remote}" if forwarded else remote
    if forwarded and forwarded.isascii():
        metadata.append(("x-forwarded-for", forwarded))
    metadata.append(("x-request-id", request_id))
    if token is not None:
        metadata.append((user_id_header, token.subject))
    metadata.extend((key.lower(), value) for key, value in added)
    return metadata


class Edge:
    """The request pipeline (one instance per server)."""

    def __init__(self, spec: EdgeSpec, routes: RouteTable, jwt: EdgeJwt,
                 limiter: RateLimitClient, upstreams: Upstreams) -> None:
        self.spec = spec
        self.routes = routes
        self.jwt = jwt
        self.limiter = limiter
        self.upstreams = upstreams
        self.cors = Cors(spec.cors)
        self._identity = frozenset(h.lower() for h in spec.identity_headers)

    def _local(self, status: int, message: str,
               headers: Mapping[str, str]) -> web.Response:
        body, content_type = local_reply(status, message)
        response = web.Response(status=status, body=body, headers=dict(headers))
        response.headers["content-type"] = content_type
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        response = await self._handle(request, request_id)
        log.info("request", extra={"method": request.method, "path": request.path,
                                   "status": response.status, "request_id": request_id,
                                   "duration_ms": round((time.perf_counter() - started)
                                                        * 1000, 3)})
        return response

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        origin = request.headers.get("origin")
        headers = {"x-request-id": request_id, **self.cors.response_headers(origin)}
        if origin and self.cors.is_preflight(request.method, request.headers):
            return web.Response(status=200, headers={**self.cors.preflight_headers(origin),
                                                     "x-request-id": request_id})
        path, _, query = request.raw_path.partition("?")
        if path == self.spec.health_path:
            return web.Response(status=200, text="OK\n", headers=headers)
        bad_escape = False
        try:
            match = self.routes.lookup(request.method, path)
        except UnicodeDecodeError:
            match, bad_escape = None, True
        route = match.value if match else None
        try:
            token = await self.jwt.check(request.headers.get("authorization"),
                                         required=not (route and route.public))
        except JwtFailure as failure:
            url = f"{request.scheme}://{request.host}{path}"
            return self._local(failure.status, failure.message, {
                **headers, "www-authenticate": failure.www_authenticate(url)})
        decision = await self.limiter.check(descriptors_for(
            self.spec, route.route_class if route else self.spec.default_class,
            user=token.subject if token else None, remote_address=request.remote))
        headers.update(decision.response_headers)
        if decision.status is not None:
            return self._local(decision.status, decision.message, headers)
        if bad_escape:
            return self._local(400, "path is not valid UTF-8 after percent-decoding", headers)
        if route is None or match is None:
            return self._local(404, f"Could not resolve {path} to a method.", headers)
        if request.content_type.startswith("application/grpc"):
            return self._local(415, "the Python edge serves REST only; call the service "
                                    "over gRPC directly", headers)
        try:
            body = await read_body(request, self.spec.max_request_body_bytes)
        except BodyTooLarge:
            return self._local(413, TOO_LARGE, headers)
        try:
            messages = build_requests(
                route.request_class, self.upstreams.pool, route.binding.body, body,
                [*match.bindings, *parse_query(query)], stream=route.method.client_streaming)
        except TranscodeError as error:
            return self._local(400, str(error), headers)
        metadata = upstream_metadata(request.headers, self._identity, token,
                                     self.spec.user_id_header, request_id, request.remote,
                                     decision.request_headers)
        return await self.upstreams.respond(request, route, messages, metadata, headers)


class EdgeServer:
    """The Python edge's HTTP server, built unstarted; `start()` returns the bound port."""

    def __init__(self, config: EdgeConfig, spec: EdgeSpec,
                 verifier: JwtVerifier | None = None) -> None:
        if config.cors_origins is not None:
            spec = spec.with_cors_origins(config.cors_origins)
        self.config = config
        self.spec = spec
        pool = build_pool(edge_descriptor_set(load_descriptor_set(config.descriptor_set)))
        routes = RouteTable(spec, pool)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._channels = {u.name: grpc.aio.insecure_channel(config.upstream_addresses[u.name],
                                                            options=options)
                          for u in spec.upstreams}
        self._auth_channel = grpc.aio.insecure_channel(config.runtime.auth_address)
        self._ratelimit_channel = grpc.aio.insecure_channel(config.ratelimit_address)
        runtime = config.runtime
        verifier = verifier or build_verifier(runtime, remote_jwks_fetcher(self._auth_channel))
        self.edge = Edge(spec, routes,
                         EdgeJwt(verifier, leeway_seconds=runtime.jwt_leeway_seconds),
                         RateLimitClient(self._ratelimit_channel, spec),
                         Upstreams(self._channels, pool))
        # Bodies are read (and limited) by the pipeline itself; a client that goes away
        # cancels its handler, which cancels the upstream call.
        self._server = web.Server(self.edge.handle, handler_cancellation=True)
        self._runner = web.ServerRunner(self._server,
                                        shutdown_timeout=runtime.shutdown_grace_seconds)
        self.port: int | None = None

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.runtime.listen_host,
                           self.config.runtime.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("edge serving", extra={"address": f"{self.config.runtime.listen_host}:"
                                                   f"{self.port}"})
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
        for channel in [*self._channels.values(), self._auth_channel, self._ratelimit_channel]:
            await channel.close()
