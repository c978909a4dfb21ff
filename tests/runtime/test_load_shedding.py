"""The per-process stream limit: exact counting, and a slot given back however a call
ends (finished, failed, cancelled, the client gone); refused calls never reach the handler."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.runtime.context import ANONYMOUS, Principal
from services.runtime.interceptor import MeshInterceptor
from services.runtime.load_shedding import OVERLOADED, ConcurrencyLimiter
from services.runtime.metrics import ServerMetrics

METHOD = "/llmmesh.test.Probe/Hold"


def test_the_limiter_is_exact_under_concurrent_threads() -> None:
    limiter = ConcurrencyLimiter(7)
    start = threading.Barrier(64)

    def attempt() -> bool:
        start.wait()
        return limiter.try_acquire()

    with ThreadPoolExecutor(64) as pool:
        taken = list(pool.map(lambda _: attempt(), range(64)))
    assert taken.count(True) == 7
    assert limiter.in_use == 7
    for _ in range(7):
        limiter.release()
    assert limiter.in_use == 0
    with pytest.raises(RuntimeError):
        limiter.release()
    with pytest.raises(ValueError):
        ConcurrencyLimiter(0)


class _Authenticator:
    async def authenticate(self, method: str, metadata: object) -> Principal:
        return ANONYMOUS


class _Context:
    """The parts of grpc.aio.ServicerContext the interceptor uses."""

    def __init__(self) -> None:
        self.status: status_pb2.Status | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    async def abort_with_status(self, status: Any) -> None:
        self.status = status
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def _wrapped(limiter: ConcurrencyLimiter, behavior: Any, method: str = METHOD) -> Any:
    interceptor = MeshInterceptor(_Authenticator(), ServerMetrics(),  # type: ignore[arg-type]
                                  stream_limiter=limiter)
    handler = interceptor._wrap(method, grpc.unary_stream_rpc_method_handler(behavior))
    return handler.unary_stream


async def test_a_slot_is_given_back_on_error_cancel_and_client_gone() -> None:
    limiter = ConcurrencyLimiter(2)
    entered = asyncio.Event()

    async def fail(request: bytes, context: object) -> AsyncIterator[bytes]:
        yield b"one"
        raise KeyError("boom")

    async def hold(request: bytes, context: object) -> AsyncIterator[bytes]:
        entered.set()
        yield b"one"
        await asyncio.Event().wait()  # until cancelled
        yield b"never"

    # An error after the first message.
    stream = _wrapped(limiter, fail)(b"", _Context())
    assert await anext(stream) == b"one"
    assert limiter.in_use == 1
    with pytest.raises(grpc.aio.AbortError):
        await anext(stream)
    assert limiter.in_use == 0

    # Cancelled while waiting inside the handler.
    async def consume() -> None:
        async for _ in _wrapped(limiter, hold)(b"", _Context()):
            pass

    task = asyncio.create_task(consume())
    await entered.wait()
    assert limiter.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.in_use == 0

    # The client went away between messages: the generator is closed.
    stream = _wrapped(limiter, hold)(b"", _Context())
    assert await anext(stream) == b"one"
    assert limiter.in_use == 1
    await stream.aclose()
    assert limiter.in_use == 0


async def test_a_full_limiter_refuses_before_the_handler_and_spares_health() -> None:
    limiter = ConcurrencyLimiter(1)
    assert limiter.try_acquire()
    called = []

    async def behavior(request: bytes, context: object) -> AsyncIterator[bytes]:
        called.append(request)
        yield b"ok"

    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await anext(_wrapped(limiter, behavior)(b"", context))
    assert called == [] and limiter.in_use == 1
    assert context.status is not None and context.status.code == grpc.StatusCode.UNAVAILABLE
    status = status_pb2.Status()
    status.ParseFromString(dict(context.status.trailing_metadata)["grpc-status-details-bin"])
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == OVERLOADED
    assert status.details[1].Unpack(retry) and retry.retry_delay.seconds >= 1

    # Health and reflection never count (and are never refused).
    health = _wrapped(limiter, behavior, "/grpc.health.v1.Health/Watch")(b"h", _Context())
    assert [message async for message in health] == [b"ok"]
    assert called == [b"h"] and limiter.in_use == 1
