"""Test helpers: reading rich error details, registering users, minting tokens, and
awaiting an outcome another process or a detached task produces."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *,
                     within: float = 10.0, what: str = "the outcome") -> T:
    """Await `probe()` until `done(value)`; the value, or AssertionError after `within` s.

    For outcomes the test cannot await directly: work in another process, or a task the
    server detached after answering. Checks as fast as the event loop allows (a few ms
    apart), so the test waits exactly as long as the work takes, not a guessed time.
    """
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g} s: {value!r}")
        await asyncio.sleep(0.005)


def window_left(window_seconds: float) -> float:
    """Seconds left in the current fixed window, aligned to the epoch as the rate limit
    service counts (gateway/ratelimit/limiter.py)."""
    return window_seconds - time.time() % window_seconds


async def clear_of_window_edge(window_seconds: float = 60.0, margin: float = 3.0) -> None:
    """Return once the current fixed window has `margin` seconds left, so a burst sent
    now is counted in one window, not split over two (which would let twice the limit
    through). Minute windows also cover hour and day ones: their edges coincide."""
    left = window_left(window_seconds)
    if left < margin:
        await asyncio.sleep(left + 0.05)


def clear_of_window_edge_sync(window_seconds: float = 60.0, margin: float = 3.0) -> None:
    """`clear_of_window_edge` for code without an event loop."""
    left = window_left(window_seconds)
    if left < margin:
        time.sleep(left + 0.05)


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status an error carries in its trailers (asserted present)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    raise AssertionError(f"no google.rpc.Status in trailers of {error!r}")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    return _detail(error, error_details_pb2.ErrorInfo)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = _detail(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad_request.field_violations}


def quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    return _detail(error, error_details_pb2.QuotaFailure)


def _detail(error, kind):  # type: ignore[no-untyped-def]
    for packed in rich_status(error).details:
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    raise AssertionError(f"no {kind.DESCRIPTOR.name} in {error!r}")


def unique_username(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


PASSWORD = "correct horse battery"


@dataclass
class LoggedIn:
    user: auth_pb2.User
    tokens: auth_pb2.TokenPair

    @property
    def user_id(self) -> str:
        return self.user.name.removeprefix("users/")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens.access_token}"),)


async def register_and_login(stub: auth_pb2_grpc.AuthServiceStub,
                             username: str | None = None) -> LoggedIn:
    username = username or unique_username()
    await stub.CreateUser(auth_pb2.CreateUserRequest(
        user=auth_pb2.User(username=username, email=f"{username}@example.com"),
        password=PASSWORD))
    login = await stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
    return LoggedIn(user=login.user, tokens=login.tokens)


def stop_process(process: subprocess.Popen[str], signum: int,
                 reader: threading.Thread | None = None, timeout: float = 30.0) -> None:
    """Stop a process under test with `signum` (SIGKILL after `timeout` s), then let
    the thread reading its output finish and close the pipe."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if reader is not None:
        reader.join(5)
    if process.stdout is not None:
        process.stdout.close()
