"""Faults: Redis killed (SIGKILL) under an auth server and started again from its
append-only file. Nothing auth acknowledged is lost — users, refresh tokens, quota
charges — and the service recovers by itself, answering UNAVAILABLE (never INTERNAL)
while Redis is away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc, quota_pb2, quota_pb2_grpc

from mesh.redis_server import LocalRedis
from services.auth.config import AuthConfig
from services.auth.server import create_server
from services.runtime.config import Env
from tests.conftest import SERVICE_METADATA, mesh_env
from tests.helpers import PASSWORD, error_info, eventually, register_and_login

USERS = 12


@pytest.fixture
async def durable_auth(tmp_path: Path) -> AsyncIterator[tuple[LocalRedis, str]]:
    """An auth server on its own Redis with an append-only file (as in compose)."""
    redis = LocalRedis(tmp_path / "redis", persistent=True)
    redis.start()
    server = create_server(AuthConfig.from_env(Env(mesh_env(redis, tmp_path / "data"))))
    port = await server.start()
    try:
        yield redis, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        redis.stop()


async def test_nothing_acknowledged_is_lost_when_redis_is_killed(
        durable_auth: tuple[LocalRedis, str]) -> None:
    redis, address = durable_auth
    async with grpc.aio.insecure_channel(address) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        quota = quota_pb2_grpc.QuotaServiceStub(channel)
        users = [await register_and_login(auth) for _ in range(USERS)]
        charged = {}
        for n, user in enumerate(users):
            hold = await quota.ReserveTokens(quota_pb2.ReserveTokensRequest(
                user_id=user.user_id, tokens=500), metadata=SERVICE_METADATA)
            await quota.SettleReservation(quota_pb2.SettleReservationRequest(
                reservation_id=hold.reservation.reservation_id, used_tokens=100 + n),
                metadata=SERVICE_METADATA)
            charged[user.user_id] = 100 + n

        assert redis.process is not None
        redis.process.kill()
        redis.process.wait()
        with pytest.raises(grpc.aio.AioRpcError) as away:
            await auth.Login(auth_pb2.LoginRequest(username=users[0].user.username,
                                                   password=PASSWORD), timeout=10)
        assert away.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_info(away.value).reason == "STORAGE_UNAVAILABLE"

        redis.restart()

        async def login_first() -> grpc.StatusCode:
            try:
                await auth.Login(auth_pb2.LoginRequest(username=users[0].user.username,
                                                       password=PASSWORD), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        await eventually(login_first, lambda code: code is grpc.StatusCode.OK,
                         what="auth recovering after the Redis restart")
        for user in users:
            me = await auth.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                    metadata=user.metadata)
            assert me.username == user.user.username
            usage = await auth.GetUsage(auth_pb2.GetUsageRequest(
                name="users/me/usages/current"), metadata=user.metadata)
            assert (usage.tokens_used, usage.tokens_reserved) == (charged[user.user_id], 0)
            refreshed = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(
                refresh_token=user.tokens.refresh_token))
            assert refreshed.tokens.refresh_token != user.tokens.refresh_token


