"""The server interceptor every llmmesh service runs.

For each call: take or make a request id, authenticate the caller, run the handler
with both in context, map domain errors to rich gRPC statuses (and anything
unexpected to INTERNAL, never a stack trace), then log one JSON line and record
Prometheus metrics.

A request body that does not decode is the caller's error, not ours: grpc.aio decodes a
unary request before any behaviour runs (a raising deserializer would end the call
UNKNOWN with an ERROR traceback from grpc itself, for anyone, token or not), so each
handler's deserializer is wrapped to hand the behaviour an `_Undecodable` marker instead;
the wrapped behaviour authenticates the caller first and then answers INVALID_ARGUMENT
(reason MALFORMED_REQUEST) — for a client stream, when the handler reaches that message.
Storage that cannot answer (Redis down) is UNAVAILABLE with RetryInfo and one rate-limited
WARNING (services/runtime/storage_errors.py), not INTERNAL with a traceback per call.
While tracing is on (services/runtime/tracing.py), each call but health and reflection
gets a SERVER span continuing the caller's W3C trace context, current while it runs.
Server-streaming calls (not health or reflection) past the process's limit are refused at
once, before authentication, with UNAVAILABLE + RetryInfo, reason OVERLOADED
(services/runtime/load_shedding.py); the slot is given back however the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Never, TypeVar

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.trace import Span

from services.runtime import tracing
from services.runtime.authn import Authenticator
from services.runtime.context import principal_var, request_id_var, servicer_context_var
from services.runtime.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    LlmmeshError,
    Unimplemented,
)
from services.runtime.load_shedding import ConcurrencyLimiter, overloaded
from services.runtime.metrics import ServerMetrics
from services.runtime.rpc_errors import abort_status
from services.runtime.storage_errors import OutageWarner, storage_unavailable

log = logging.getLogger("llmmesh.rpc")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Logged at DEBUG: probes, and the edge's per-request rate-limit decision (Envoy's access
# log has every request already).
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.",
                   "/envoy.service.ratelimit.v3.RateLimitService/")
# Never shed: a probe must see the process, and reflection is a tool's, not a client's.
_UNLIMITED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
# Any call's context: the interceptor serves every method, whatever its message types.
Context = grpc.aio.ServicerContext[Any, Any]
# A handler's behaviour, called with the request (or, client streaming, the request
# iterator) and the call's context. grpc-stubs types RpcMethodHandler's behaviours for the
# synchronous server; on grpc.aio they are coroutine or async generator functions that
# take a grpc.aio.ServicerContext, so only "callable" is true of both.
Behavior = Callable[..., object]
Deserializer = Callable[[bytes], object]


class MeshInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, authentication, error mapping, JSON logs and metrics."""

    def __init__(self, authenticator: Authenticator, metrics: ServerMetrics, *,
                 stream_limiter: ConcurrencyLimiter | None = None) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        # Server-streaming calls in flight in this process, at most its limit.
        self.stream_limiter = stream_limiter
        # The wrapped handler of each method, built once (grpc asks for it on every call).
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._storage_outage = OutageWarner(log)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[RequestT, ResponseT] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:  # not a method of this server: grpc answers UNIMPLEMENTED
            return None
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[RequestT, ResponseT]
              ) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
        streamed = handler.request_streaming
        # grpc-stubs types the deserializer as returning RequestT; ours may return the
        # _Undecodable marker, which the wrapped behaviour turns into INVALID_ARGUMENT.
        deserializer: Any = _tolerant(handler.request_deserializer)
        if handler.response_streaming:
            streaming: Behavior | None = handler.unary_stream or handler.stream_stream
            assert streaming is not None, f"{method}: a streaming handler without behaviour"
            limiter = (None if method.startswith(_UNLIMITED_PREFIXES)
                       else self.stream_limiter)
            wrapped_stream = self._wrap_stream(method, streaming, streamed, limiter)
            factory = (grpc.stream_stream_rpc_method_handler if streamed
                       else grpc.unary_stream_rpc_method_handler)
            return factory(wrapped_stream, request_deserializer=deserializer,
                           response_serializer=handler.response_serializer)
        behavior: Behavior | None = handler.unary_unary or handler.stream_unary
        assert behavior is not None, f"{method}: a unary handler without behaviour"
        wrapped_unary = self._wrap_unary(method, behavior, streamed)
        factory = (grpc.stream_unary_rpc_method_handler if streamed
                   else grpc.unary_unary_rpc_method_handler)
        return factory(wrapped_unary, request_deserializer=deserializer,
                       response_serializer=handler.response_serializer)

    def _wrap_unary(self, method: str, behavior: Behavior, streamed: bool
                    ) -> Callable[[object, Context], Awaitable[object]]:
        async def unary(request: object, context: Context) -> object:
            call = _Call(self, method, context)
            try:
                await call.begin()
                result = behavior(_decoded(method, request, streamed), context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as error:
                await call.fail(error)
                raise
            finally:
                call.end()

        return unary

    def _wrap_stream(self, method: str, behavior: Behavior, streamed: bool,
                     limiter: ConcurrencyLimiter | None
                     ) -> Callable[[object, Context], AsyncGenerator[object, None]]:
        async def stream(request: object, context: Context) -> AsyncGenerator[object, None]:
            call = _Call(self, method, context)
            result: object = None
            try:
                await call.begin(limiter)
                result = behavior(_decoded(method, request, streamed), context)
                if isinstance(result, AsyncIterable):
                    async for message in result:
                        yield message
                elif inspect.isawaitable(result):
                    await result
            except BaseException as error:
                await call.fail(error)
                raise
            finally:
                # Close the handler's generator now, not whenever it is garbage collected:
                # a client that went away must stop the work (e.g. a model call) at once.
                try:
                    if inspect.isasyncgen(result):
                        await _close_quietly(result)
                finally:  # even when a second cancel interrupts the close
                    call.end()

        return stream


@dataclass(frozen=True)
class _Undecodable:
    """What a request that did not decode is handed to the wrapped behaviour as."""

    problem: str


def _tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, answering _Undecodable instead of raising on a malformed body."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> object:
        try:
            return deserializer(data)
        except (DecodeError, ValueError) as error:  # ValueError: e.g. invalid UTF-8
            return _Undecodable(str(error) or type(error).__name__)

    return deserialize


def _malformed(method: str, request: _Undecodable) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("request", f"is not a valid protobuf message for {method}")],
        f"the request body could not be decoded: {request.problem}",
        reason="MALFORMED_REQUEST", metadata={"method": method})


def _decoded(method: str, request: object, streamed: bool) -> object:
    """The request the behaviour gets: a client stream checked message by message, or the
    one request (raising INVALID_ARGUMENT when it did not decode)."""
    if streamed:
        assert isinstance(request, AsyncIterable), f"{method}: a client stream of {request!r}"
        return _DecodedStream(method, request)
    if isinstance(request, _Undecodable):
        raise _malformed(method, request)
    return request


class _DecodedStream:
    """A client stream's request iterator that raises INVALID_ARGUMENT at a message that did
    not decode. A plain iterator, not an async generator, so a handler that stops reading
    early leaves nothing to finalise."""

    def __init__(self, method: str, requests: AsyncIterable[object]) -> None:
        self._method = method
        self._requests: AsyncIterator[object] = aiter(requests)

    def __aiter__(self) -> _DecodedStream:
        return self

    async def __anext__(self) -> object:
        request = await anext(self._requests)
        if isinstance(request, _Undecodable):
            raise _malformed(self._method, request)
        return request


async def _close_quietly(generator: AsyncGenerator[object, Never]) -> None:
    try:
        await generator.aclose()
    except Exception:
        log.exception("closing a server stream's generator failed")


class _Call:
    """Bookkeeping for one RPC: context variables, status, timing, log and metrics."""

    def __init__(self, interceptor: MeshInterceptor, method: str, context: Context) -> None:
        self._interceptor = interceptor
        self.method = method
        self.context = context
        _, _, path = method.partition("/")
        self.service, _, self.method_name = path.partition("/")
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        self._tokens: list[Token[Any]] = []
        self._counted = False
        self._slot: ConcurrencyLimiter | None = None  # the limiter this call holds a slot of
        self._span: Span | None = None  # the call's SERVER span, while tracing
        # Every value of each text key: authentication refuses a repeated credential rather
        # than pick one of them.
        self._metadata: dict[str, list[str]] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                self._metadata.setdefault(key, []).append(value)

    async def begin(self, limiter: ConcurrencyLimiter | None = None) -> None:
        """Set the call's context up; refuse it (OVERLOADED) when `limiter` is full."""
        supplied = self._metadata.get(REQUEST_ID_HEADER, [""])[0]
        request_id = supplied if _REQUEST_ID_PATTERN.match(supplied) else uuid.uuid4().hex
        self._tokens = [request_id_var.set(request_id), servicer_context_var.set(self.context)]
        tracer = tracing.tracer()
        if tracer is not None and not self.method.startswith(_UNLIMITED_PREFIXES):
            self._span, token = tracing.start_server_span(tracer, self.method, self._metadata,
                                                          request_id)
            self._tokens.append(token)
        self._interceptor._metrics.in_flight.labels(self.service, self.method_name).inc()
        self._counted = True
        self.context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        if limiter is not None:
            if not limiter.try_acquire():
                raise overloaded(self.method, limiter.limit)
            self._slot = limiter  # given back in end(), however the call ends
        principal = await self._interceptor._authenticator.authenticate(
            self.method, self._metadata)
        self._tokens.append(principal_var.set(principal))

    async def fail(self, error: BaseException) -> None:
        """Record why the call failed; turn domain and unexpected errors into statuses."""
        if isinstance(error, grpc.aio.AbortError):
            self.code = _context_code(self.context)
            return
        if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the client went away
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(error, NotImplementedError):  # generated servicer base classes
            error = Unimplemented(f"{self.method} is not implemented yet")
        if not isinstance(error, LlmmeshError):
            unavailable = storage_unavailable(error)
            if unavailable is not None:
                self._interceptor._storage_outage.failed(self.method, error)
                error = unavailable
            else:
                log.error("unhandled error in %s", self.method, exc_info=error)
                if self._span is not None:
                    self._span.record_exception(error)
                error = Internal(f"internal error (request id {request_id_var.get()})")
        self.code = error.code
        await self.context.abort_with_status(
            abort_status(error, ((REQUEST_ID_HEADER, request_id_var.get()),)))

    def end(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        elapsed = time.perf_counter() - self.started
        metrics = self._interceptor._metrics
        code = self.code.name
        if self._counted:
            metrics.in_flight.labels(self.service, self.method_name).dec()
        metrics.handled.labels(self.service, self.method_name, code).observe(elapsed)
        if self.code is not grpc.StatusCode.OK:
            metrics.errors.labels(self.service, self.method_name, code).inc()
        level = logging.DEBUG if self.method.startswith(_QUIET_PREFIXES) else logging.INFO
        if log.isEnabledFor(level):
            principal = principal_var.get()
            log.log(level, "rpc", extra={"method": self.method, "code": code,
                                         "duration_ms": round(elapsed * 1000, 3),
                                         "caller": principal.subject or principal.kind})
        if self._span is not None:  # ended after the log line, which names its trace
            tracing.end_rpc_span(self._span, self.code, server=True)
        for token in reversed(self._tokens):
            # A stream finalised from another context (after the client went away): the
            # values were only ever set in the call's own context, so nothing leaks.
            with contextlib.suppress(ValueError):
                token.var.reset(token)


def _context_code(context: Context) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 — older grpcio without ServicerContext.code()
        return grpc.StatusCode.UNKNOWN
    return _status_code(code)


def _status_code(code: object) -> grpc.StatusCode:
    """What ServicerContext.code() returned, as a StatusCode. grpc-stubs says StatusCode;
    grpcio returns None until a code is set, and older releases return the number."""
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN
