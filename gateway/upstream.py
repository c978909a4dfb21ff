"""Calls to the services and the HTTP responses made from their answers.

Unary answers become one JSON body (or the raw bytes of a `google.api.HttpBody`).
Server streams are sent as Server-Sent Events as they arrive, like Envoy's
`stream_sse_style_delimited`: each message as `data: <json>\\n\\n`, content type
text/event-stream, nothing after the last one. The HTTP status is decided by the first
message: an error before it is an ordinary error response; an error after it can only
end the stream (an HTTP/1.1 client never sees gRPC trailers), which is why streamed
RPCs carry their end and errors inside their messages. When the client goes away the
handler is cancelled and so is the upstream call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from gateway.routes import Route
from gateway.status import error_body, http_status
from gateway.transcode import render_response, to_json

log = logging.getLogger("llmmesh.edge")

Metadata = Sequence[tuple[str, str]]
_SKIPPED_RESPONSE_HEADERS = {"content-type", "content-length", "x-request-id", "connection",
                             "transfer-encoding", "keep-alive", "te", "trailer", "upgrade"}


def _forwardable(metadata: Any) -> dict[str, str]:
    """Upstream metadata that becomes HTTP response headers."""
    headers = {}
    for key, value in metadata or ():
        if (isinstance(value, str) and not key.startswith(("grpc-", ":"))
                and not key.endswith("-bin") and key not in _SKIPPED_RESPONSE_HEADERS):
            headers[key] = value
    return headers


def sse_frame(message: Message, pool: descriptor_pool.DescriptorPool) -> bytes:
    return b"data: " + to_json(message, pool) + b"\n\n"


class Upstreams:
    """One long-lived channel per upstream; generic calls by full method name."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel],
                 pool: descriptor_pool.DescriptorPool) -> None:
        self._channels = channels
        self.pool = pool
        self._callables: dict[str, Any] = {}

    def _callable(self, route: Route) -> Any:
        method = route.method
        found = self._callables.get(method.full_name)
        if found is None:
            channel = self._channels[route.upstream]
            kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                    (True, False): channel.stream_unary, (True, True): channel.stream_stream}
            factory = kind[(method.client_streaming, method.server_streaming)]
            found = factory(method.full_name,
                            request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=route.response_class.FromString)
            self._callables[method.full_name] = found
        return found

    async def respond(self, request: web.Request, route: Route, messages: list[Message],
                      metadata: Metadata, headers: dict[str, str]) -> web.StreamResponse:
        """Call the method and answer the HTTP request with its result."""
        multicallable = self._callable(route)
        argument: Any = iter(messages) if route.method.client_streaming else messages[0]
        call = multicallable(argument, metadata=tuple(metadata), timeout=route.timeout)
        try:
            if route.method.server_streaming:
                return await self._stream(request, route, call, headers)
            return await self._unary(route, call, headers)
        finally:
            if not call.done():
                call.cancel()

    def _error(self, error: grpc.aio.AioRpcError, headers: dict[str, str]) -> web.Response:
        body, extra = error_body(error, self.pool)
        merged = {**_forwardable(error.initial_metadata()),
                  **_forwardable(error.trailing_metadata()), **extra, **headers}
        return web.Response(status=http_status(error.code()), body=body, headers=merged,
                            content_type="application/json" if body else None)

    async def _unary(self, route: Route, call: Any,
                     headers: dict[str, str]) -> web.StreamResponse:
        try:
            reply = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as error:
            return self._error(error, headers)
        body, content_type = render_response(reply, self.pool, route.binding.response_body)
        response = web.Response(status=200, body=body,
                                headers={**_forwardable(initial), **headers})
        if content_type:
            response.headers["content-type"] = content_type
        return response

    async def _stream(self, request: web.Request, route: Route, call: Any,
                      headers: dict[str, str]) -> web.StreamResponse:
        messages = call.__aiter__()
        try:
            first: Message | None = await messages.__anext__()
        except StopAsyncIteration:
            first = None
        except grpc.aio.AioRpcError as error:
            return self._error(error, headers)
        initial = await call.initial_metadata()
        response = web.StreamResponse(status=200, headers={**_forwardable(initial), **headers})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        if first is not None:
            await response.write(sse_frame(first, self.pool))
            try:
                async for message in messages:
                    await response.write(sse_frame(message, self.pool))
            except grpc.aio.AioRpcError as error:
                log.info("stream ended by upstream error",
                         extra={"method": route.method.full_name, "code": error.code().name})
        await response.write_eof()
        return response
