"""Every registration and login rule answers INVALID_ARGUMENT with its field, and a
refused registration writes nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2

from tests.helpers import PASSWORD, error_info, field_violations, unique_username


def _request(username: str, email: str, password: str) -> auth_pb2.CreateUserRequest:
    return auth_pb2.CreateUserRequest(user=auth_pb2.User(username=username, email=email),
                                      password=password)


async def _violations(auth_stub, request) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.CreateUser(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).domain == "llmmesh"
    return field_violations(caught.value)


@pytest.mark.parametrize("username", ["ab", "a" * 33, "-leading", "has space", "semi;colon",
                                      "ünïcode", ""])
async def test_bad_usernames(auth_stub, username: str) -> None:
    violations = await _violations(auth_stub, _request(username, "ok@example.com", PASSWORD))
    assert set(violations) == {"user.username"}


@pytest.mark.parametrize("email", ["", "plain", "@example.com", "a@", "a@b", "a b@example.com",
                                   "a@-example.com", "x" * 250 + "@example.com"])
async def test_bad_emails(auth_stub, email: str) -> None:
    violations = await _violations(auth_stub, _request(unique_username(), email, PASSWORD))
    assert set(violations) == {"user.email"}


@pytest.mark.parametrize("password", ["", "7 bytes", "€" * 24 + "x", "p" * 73])  # 73 bytes
async def test_bad_passwords(auth_stub, password: str) -> None:
    violations = await _violations(auth_stub, _request(unique_username(), "ok@example.com",
                                                       password))
    assert set(violations) == {"password"}
    assert "bytes" in violations["password"]


async def test_password_limits_are_bytes_not_characters(auth_stub) -> None:
    username = unique_username()
    # 24 three-byte characters = 72 bytes: the longest password bcrypt checks in full.
    longest = "€" * 24
    await auth_stub.CreateUser(_request(username, f"{username}@example.com", longest))
    await auth_stub.Login(auth_pb2.LoginRequest(username=username, password=longest))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Login(auth_pb2.LoginRequest(username=username, password="€" * 23))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_all_violations_at_once(auth_stub) -> None:
    violations = await _violations(auth_stub, auth_pb2.CreateUserRequest())
    assert set(violations) == {"user.username", "user.email", "password"}


async def test_refused_registration_leaves_nothing(auth_stub, redis_server) -> None:
    import redis.asyncio

    username = unique_username()
    await _violations(auth_stub, _request(username, "not-an-email", PASSWORD))
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        assert await client.keys(f"*{username.lower()}*") == []
    finally:
        await client.aclose()
    # The name is still free.
    await auth_stub.CreateUser(_request(username, f"{username}@example.com", PASSWORD))


@pytest.mark.parametrize("field", ["username", "password"])
async def test_login_requires_both_fields(auth_stub, field: str) -> None:
    request = auth_pb2.LoginRequest(username="someone", password=PASSWORD)
    request.ClearField(field)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Login(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {field}


@pytest.mark.parametrize("name", ["", "users", "users/me/extra", "people/me"])
async def test_bad_user_names(auth_stub, alice, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.GetUser(auth_pb2.GetUserRequest(name=name), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"name"}


@pytest.mark.parametrize("name", ["users/me/usages/2024-13", "users/me/usages/24-01",
                                  "users/me/usages/", "users/me/usage/current"])
async def test_bad_usage_names(auth_stub, alice, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name=name), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_twenty_concurrent_registrations_of_one_username(auth_stub) -> None:
    username = unique_username("race")
    requests = [_request(username if i % 2 else username.upper(), f"{username}-{i}@example.com",
                         PASSWORD) for i in range(20)]
    outcomes = await asyncio.gather(*(auth_stub.CreateUser(r) for r in requests),
                                    return_exceptions=True)
    created = [o for o in outcomes if isinstance(o, auth_pb2.User)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(created) == 1
    assert len(refused) == 19
    assert {e.code() for e in refused} == {grpc.StatusCode.ALREADY_EXISTS}
    assert {error_info(e).reason for e in refused} == {"USERNAME_TAKEN"}


async def test_twenty_concurrent_registrations_of_one_email(auth_stub) -> None:
    email = f"{unique_username('shared')}@example.com"
    outcomes = await asyncio.gather(
        *(auth_stub.CreateUser(_request(unique_username(), email, PASSWORD)) for _ in range(20)),
        return_exceptions=True)
    assert sum(isinstance(o, auth_pb2.User) for o in outcomes) == 1
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert {error_info(e).reason for e in refused} == {"EMAIL_TAKEN"}
    assert len(refused) == 19


@pytest.mark.parametrize("password", ["€" * 24 + "x", "p" * 73, "p" * 1000])  # over 72 bytes
async def test_login_with_a_password_over_72_bytes(auth_stub, password: str) -> None:
    # bcrypt 5 raises past 72 bytes (no account can have such a password): refused as
    # INVALID_ARGUMENT for any username, known or not, before a lookup or a hash.
    username = unique_username()
    await auth_stub.CreateUser(_request(username, f"{username}@example.com", PASSWORD))
    for name in (username, unique_username()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_stub.Login(auth_pb2.LoginRequest(username=name, password=password))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == {"password"}
        assert "72 bytes" in field_violations(caught.value)["password"]
