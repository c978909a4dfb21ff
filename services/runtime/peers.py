"""Channels to other llmmesh services that forward the caller's identity, request id
and remaining deadline, and present the service credential. While tracing is on, each
call gets a CLIENT span, its W3C `traceparent` sent along (services/runtime/tracing.py)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry.trace import Span

from services.runtime import tracing
from services.runtime.authn import AUTHORIZATION_HEADER, ON_BEHALF_HEADER, SERVICE_TOKEN_HEADER
from services.runtime.context import current_principal, remaining_deadline, request_id_var
from services.runtime.interceptor import REQUEST_ID_HEADER

DEFAULT_TIMEOUT_SECONDS = 10.0

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
_CallT = TypeVar("_CallT")
RequestIterator = AsyncIterable[RequestT] | Iterable[RequestT]


class _Forwarding:
    """Shared logic of the four client interceptor kinds."""

    def __init__(self, service_token: str, default_timeout: float) -> None:
        self._service_token = service_token
        self._default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails
                 ) -> tuple[grpc.aio.ClientCallDetails, Span | None]:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        present = {key for key, _ in metadata}
        metadata.add(SERVICE_TOKEN_HEADER, self._service_token)
        principal = current_principal()
        if principal.bearer_token and AUTHORIZATION_HEADER not in present:
            metadata.add(AUTHORIZATION_HEADER, f"Bearer {principal.bearer_token}")
        elif principal.is_user and AUTHORIZATION_HEADER not in present:
            metadata.add(ON_BEHALF_HEADER, principal.subject)  # no token: the user's id
        request_id = request_id_var.get()
        if request_id and REQUEST_ID_HEADER not in present:
            metadata.add(REQUEST_ID_HEADER, request_id)
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        inherited = remaining_deadline()
        if inherited is not None:
            timeout = min(timeout, inherited)
        tracer = tracing.tracer()
        span = (None if tracer is None
                else tracing.start_client_span(tracer, details.method, metadata))
        return grpc.aio.ClientCallDetails(
            method=details.method, timeout=timeout, metadata=metadata,
            credentials=details.credentials, wait_for_ready=details.wait_for_ready,
        ), span

    @staticmethod
    def _traced(call: _CallT, span: Span | None) -> _CallT:
        if span is not None:
            tracing.end_when_done(span, call)
        return call


class _UnaryUnary(_Forwarding, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, RequestT],
                               Awaitable[grpc.aio.UnaryUnaryCall[RequestT, ResponseT]]],
        details: grpc.aio.ClientCallDetails, request: RequestT,
    ) -> grpc.aio.UnaryUnaryCall[RequestT, ResponseT]:
        forwarded, span = self._details(details)
        return self._traced(await continuation(forwarded, request), span)


class _UnaryStream(_Forwarding, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, RequestT],
                               Awaitable[grpc.aio.UnaryStreamCall[RequestT, ResponseT]]],
        details: grpc.aio.ClientCallDetails, request: RequestT,
    ) -> grpc.aio.UnaryStreamCall[RequestT, ResponseT]:
        forwarded, span = self._details(details)
        return self._traced(await continuation(forwarded, request), span)


class _StreamUnary(_Forwarding, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, RequestIterator[RequestT]],
                               Awaitable[grpc.aio.StreamUnaryCall[RequestT, ResponseT]]],
        details: grpc.aio.ClientCallDetails, request_iterator: RequestIterator[RequestT],
    ) -> grpc.aio.StreamUnaryCall[RequestT, ResponseT]:
        forwarded, span = self._details(details)
        return self._traced(await continuation(forwarded, request_iterator), span)


class _StreamStream(_Forwarding, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, RequestIterator[RequestT]],
                               Awaitable[grpc.aio.StreamStreamCall[RequestT, ResponseT]]],
        details: grpc.aio.ClientCallDetails, request_iterator: RequestIterator[RequestT],
    ) -> grpc.aio.StreamStreamCall[RequestT, ResponseT]:
        forwarded, span = self._details(details)
        return self._traced(await continuation(forwarded, request_iterator), span)


def peer_channel(address: str, service_token: str, *,
                 default_timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """One long-lived channel to a peer; every call gets a deadline (the caller's
    remaining one when shorter), the caller's bearer token, the request id and the
    service credential."""
    interceptors = [cls(service_token, default_timeout)
                    for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors, options=list(options))
