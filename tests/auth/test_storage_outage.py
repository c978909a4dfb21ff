"""Auth over a Redis that is not there: every call answers UNAVAILABLE with RetryInfo and
the STORAGE_UNAVAILABLE reason, and the log gets one WARNING, never a traceback."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh.redis_server import LocalRedis, free_port
from services.auth.config import AuthConfig
from services.auth.server import create_server
from services.runtime.config import Env
from services.runtime.storage_errors import STORAGE_UNAVAILABLE_REASON
from tests.conftest import mesh_env
from tests.helpers import (
    PASSWORD,
    _detail,
    error_info,
    register_and_login,
    unique_username,
)


@pytest.fixture
async def stub_without_redis(redis_server, data_dir) -> AsyncIterator[  # type: ignore[no-untyped-def]
        auth_pb2_grpc.AuthServiceStub]:
    env = mesh_env(redis_server, data_dir,
                   LLMMESH_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    server = create_server(AuthConfig.from_env(Env(env)))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        await server.stop(0)


async def test_redis_down_is_unavailable_with_one_warning(stub_without_redis, caplog) -> None:
    caplog.set_level(logging.WARNING)
    calls = [stub_without_redis.Login(auth_pb2.LoginRequest(username=unique_username(),
                                                           password=PASSWORD))
             for _ in range(10)]
    calls.append(stub_without_redis.CreateUser(auth_pb2.CreateUserRequest(
        user=auth_pb2.User(username=unique_username(), email="x@example.com"),
        password=PASSWORD)))
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(caught.value).reason == STORAGE_UNAVAILABLE_REASON
        retry = _detail(caught.value, error_details_pb2.RetryInfo)
        assert retry.retry_delay.ToTimedelta().total_seconds() == 1.0
    serious = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in serious] == [logging.WARNING], [r.getMessage() for r in serious]
    assert "storage unavailable" in serious[0].getMessage()
    assert serious[0].exc_info is None


async def test_a_paused_redis_fails_calls_on_warm_connections_within_the_timeout(
        tmp_path, data_dir) -> None:  # type: ignore[no-untyped-def]
    """A Redis that stops answering (SIGSTOP: its socket still accepts) must not hold a
    call forever on a pooled connection: UNAVAILABLE after LLMMESH_REDIS_TIMEOUT_SECONDS,
    and calls work again once it answers."""
    redis = LocalRedis(tmp_path / "redis", persistent=False)
    redis.start()
    env = mesh_env(redis, data_dir, LLMMESH_REDIS_TIMEOUT_SECONDS="1")
    server = create_server(AuthConfig.from_env(Env(env)))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            user = await register_and_login(stub)  # the pool's connections are warm now
            assert redis.process is not None
            os.kill(redis.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                       metadata=user.metadata, timeout=10)
                took = time.monotonic() - started
            finally:
                os.kill(redis.process.pid, signal.SIGCONT)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(caught.value).reason == STORAGE_UNAVAILABLE_REASON
            assert took < 3, took
            answer = await stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                        metadata=user.metadata, timeout=10)
            assert answer.name == user.user.name
    finally:
        await server.stop(0)
        redis.stop()
