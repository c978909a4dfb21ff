"""The auth flow end to end over a real socket and a real Redis."""

from __future__ import annotations

import json

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2

from tests.helpers import PASSWORD, LoggedIn, error_info, unique_username


async def test_register_login_and_read_self(auth_stub) -> None:
    username = unique_username("Flow")
    created = await auth_stub.CreateUser(auth_pb2.CreateUserRequest(
        user=auth_pb2.User(username=username, email=f"{username}@Example.com"),
        password=PASSWORD))
    assert created.name.startswith("users/") and len(created.name) == len("users/") + 32
    assert created.username == username
    assert created.create_time.seconds > 0
    assert created.monthly_token_limit == 100_000

    login = await auth_stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
    assert login.user.name == created.name
    assert login.tokens.token_type == "Bearer"
    access_ttl = (login.tokens.access_token_expire_time.seconds
                  - created.create_time.seconds)
    assert 850 <= access_ttl <= 905  # 15 minutes by default
    assert login.tokens.refresh_token.startswith("rt_")

    # Email works as a login name too, case-insensitively.
    by_email = await auth_stub.Login(auth_pb2.LoginRequest(
        username=f"{username.lower()}@example.com", password=PASSWORD))
    assert by_email.user.name == created.name

    me = await auth_stub.GetUser(
        auth_pb2.GetUserRequest(name="users/me"),
        metadata=(("authorization", f"Bearer {login.tokens.access_token}"),))
    assert me.name == created.name and me.email == f"{username}@Example.com"
    by_id = await auth_stub.GetUser(
        auth_pb2.GetUserRequest(name=created.name),
        metadata=(("authorization", f"Bearer {login.tokens.access_token}"),))
    assert by_id == me


async def test_unknown_user_and_wrong_password_answer_alike(auth_stub, alice: LoggedIn) -> None:
    answers = []
    for username, password in [(alice.user.username, "wrong password!"),
                               (unique_username("ghost"), PASSWORD)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_stub.Login(auth_pb2.LoginRequest(username=username, password=password))
        answers.append((caught.value.code(), caught.value.details(),
                        error_info(caught.value).reason))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED
    assert answers[0][2] == "INVALID_CREDENTIALS"


async def test_other_users_are_not_found(auth_stub, alice: LoggedIn) -> None:
    from tests.helpers import register_and_login

    bob = await register_and_login(auth_stub)
    for name in [bob.user.name, f"users/{bob.user_id}/usages/current"]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if "/usages/" in name:
                await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name=name),
                                         metadata=alice.metadata)
            else:
                await auth_stub.GetUser(auth_pb2.GetUserRequest(name=name),
                                        metadata=alice.metadata)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_usage_of_a_fresh_user(auth_stub, alice: LoggedIn) -> None:
    usage = await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                                     metadata=alice.metadata)
    assert usage.name == f"users/{alice.user_id}/usages/{usage.month}"
    assert (usage.tokens_used, usage.tokens_reserved) == (0, 0)
    assert usage.token_limit == usage.tokens_remaining == 100_000
    old = await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/2024-02"),
                                   metadata=alice.metadata)
    assert old.month == "2024-02" and old.tokens_used == 0


async def test_jwks_publishes_the_signing_key(auth_stub, alice: LoggedIn) -> None:
    import jwt

    body = await auth_stub.GetJwks(auth_pb2.GetJwksRequest())
    assert body.content_type == "application/json"
    keys = json.loads(body.data)["keys"]
    header = jwt.get_unverified_header(alice.tokens.access_token)
    assert header["alg"] == "ES256"
    (key,) = [k for k in keys if k["kid"] == header["kid"]]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key
    claims = jwt.decode(alice.tokens.access_token, jwt.PyJWK.from_dict(key),
                        algorithms=["ES256"], audience="llmmesh", issuer="llmmesh-auth")
    assert claims["sub"] == alice.user_id
    assert {"exp", "iat", "jti", "iss", "aud"} <= set(claims)


async def test_refresh_rotates_and_reuse_revokes_the_family(auth_stub, alice: LoggedIn) -> None:
    first = alice.tokens.refresh_token
    second = (await auth_stub.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=first))).tokens
    assert second.refresh_token != first
    assert second.access_token != alice.tokens.access_token
    third = (await auth_stub.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=second.refresh_token))).tokens

    # The spent first token comes back: someone copied it. The whole family dies.
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await auth_stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first))
    assert reused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(reused.value).reason == "REFRESH_TOKEN_REUSED"
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await auth_stub.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=third.refresh_token))
    assert error_info(revoked.value).reason == "REFRESH_TOKEN_REVOKED"

    # Another login is another family and still works.
    again = await auth_stub.Login(auth_pb2.LoginRequest(username=alice.user.username,
                                                        password=PASSWORD))
    await auth_stub.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=again.tokens.refresh_token))


async def test_logout_revokes_the_session(auth_stub, alice: LoggedIn) -> None:
    refreshed = (await auth_stub.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=alice.tokens.refresh_token))).tokens
    await auth_stub.Logout(auth_pb2.LogoutRequest(refresh_token=refreshed.refresh_token),
                           metadata=alice.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=refreshed.refresh_token))
    assert error_info(caught.value).reason == "REFRESH_TOKEN_REVOKED"
    # Logging out twice is harmless.
    await auth_stub.Logout(auth_pb2.LogoutRequest(refresh_token=refreshed.refresh_token),
                           metadata=alice.metadata)


async def test_logout_needs_the_sessions_owner(auth_stub, alice: LoggedIn) -> None:
    from tests.helpers import register_and_login

    mallory = await register_and_login(auth_stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.Logout(auth_pb2.LogoutRequest(refresh_token=alice.tokens.refresh_token),
                               metadata=mallory.metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Alice's session survives.
    await auth_stub.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=alice.tokens.refresh_token))


@pytest.mark.parametrize("token", ["", "rt_short.x", "not-a-token",
                                   "rt_" + "a" * 22 + "." + "b" * 43])
async def test_bad_refresh_tokens(auth_stub, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token))
    expected = grpc.StatusCode.INVALID_ARGUMENT if not token else grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.code() == expected
