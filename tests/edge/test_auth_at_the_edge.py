"""JWT checks at the edge (jwt_authn's outcomes), the public routes, and the identity
headers a client may not set."""

from __future__ import annotations

import time
import uuid

import aiohttp
import grpc
import jwt
import pytest
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth.keys import SigningKey
from tests.edge.conftest import EdgeUser
from tests.edge.harness import TEST_SPEC, TIGHT_LIMIT


def mint(key: SigningKey, kid: str | None = None, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": TEST_SPEC.jwt_issuer, "aud": TEST_SPEC.jwt_audience, "sub": "someone",
               "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode(payload, key.private_key, algorithm="ES256",
                      headers={"kid": kid or key.kid})


async def refusal(http: aiohttp.ClientSession, url: str,
                  token: str | None) -> tuple[int, dict[str, object], str]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json(), response.headers.get(
            "www-authenticate", "")


async def test_public_routes_need_no_token(http: aiohttp.ClientSession, edge_url: str,
                                           user: EdgeUser) -> None:
    async with http.post(f"{edge_url}/v1/auth:refresh",
                         json={"refreshToken": user.refresh_token}) as response:
        assert response.status == 200
        tokens = (await response.json())["tokens"]
    assert tokens["refreshToken"] != user.refresh_token
    async with http.get(f"{edge_url}/.well-known/jwks.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert (await response.json())["keys"][0]["alg"] == "ES256"
    async with http.get(f"{edge_url}{TEST_SPEC.health_path}") as response:
        assert response.status == 200


async def test_a_valid_token_reaches_the_service(http: aiohttp.ClientSession, edge_url: str,
                                                 user: EdgeUser) -> None:
    async with http.get(f"{edge_url}/v1/users/me", headers=user.bearer) as response:
        assert response.status == 200
        assert (await response.json())["username"] == user.username
    async with http.get(f"{edge_url}/v1/users/me/usages/current",
                        headers=user.bearer) as response:
        assert response.status == 200
        assert "tokenLimit" in await response.json()


async def test_missing_token(http: aiohttp.ClientSession, edge_url: str) -> None:
    status, body, challenge = await refusal(http, f"{edge_url}/v1/users/me", None)
    assert (status, body) == (401, {"code": 16, "message": "Jwt is missing"})
    assert challenge == 'Bearer realm="llmmesh"', "never the request URL"


async def test_forged_token_with_the_real_kid(http: aiohttp.ClientSession, edge_url: str,
                                              shared_user: EdgeUser) -> None:
    real_kid = jwt.get_unverified_header(shared_user.access_token)["kid"]
    forged = mint(SigningKey.generate(), kid=real_kid, sub=shared_user.user_id)
    status, body, challenge = await refusal(http, f"{edge_url}/v1/users/me", forged)
    assert (status, body["message"]) == (401, "Jwt verification fails")
    assert 'error="invalid_token"' in challenge


async def test_expired_token_and_wrong_audience_are_401_as_at_the_services(
        http: aiohttp.ClientSession, edge_url: str, signing_key_pem: bytes,
        auth_stub: auth_pb2_grpc.AuthServiceStub) -> None:
    key = SigningKey.from_pem(signing_key_pem)
    now = int(time.time())
    expired = mint(key, iat=now - 3600, nbf=now - 3600, exp=now - 600)
    status, body, challenge = await refusal(http, f"{edge_url}/v1/users/me", expired)
    assert (status, body["message"]) == (401, "Jwt is expired")
    assert challenge == 'Bearer realm="llmmesh", error="invalid_token"'
    other_audience = mint(key, aud="somebody-else")
    status, body, challenge = await refusal(http, f"{edge_url}/v1/users/me", other_audience)
    assert (status, body) == (401, {"code": 16, "message": "Audiences in Jwt are not allowed"})
    assert challenge == 'Bearer realm="llmmesh", error="invalid_token"'
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await auth_stub.GetUser(auth_pb2.GetUserRequest(name="users/me"), metadata=(
            ("authorization", f"Bearer {other_audience}"),))
    assert direct.value.code() is grpc.StatusCode.UNAUTHENTICATED, "the services agree"
    async with grpc.aio.insecure_channel(edge_url.removeprefix("http://")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as through_envoy:
            await auth_pb2_grpc.AuthServiceStub(channel).GetUser(
                auth_pb2.GetUserRequest(name="users/me"),
                metadata=(("authorization", f"Bearer {other_audience}"),))
    assert through_envoy.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(http: aiohttp.ClientSession,
                                                     edge_url: str, shared_user: EdgeUser,
                                                     scheme: str) -> None:
    header = {"authorization": f"{scheme} {shared_user.access_token}"}
    async with http.get(f"{edge_url}/v1/users/me", headers=header) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["username"] == shared_user.username


@pytest.mark.parametrize("scheme", ["Basic", "Token", ""])
async def test_other_schemes_carry_no_token(http: aiohttp.ClientSession, edge_url: str,
                                            shared_user: EdgeUser, scheme: str) -> None:
    header = {"authorization": f"{scheme} {shared_user.access_token}".strip()}
    async with http.get(f"{edge_url}/v1/users/me", headers=header) as response:
        assert response.status == 401
        assert (await response.json())["message"] == "Jwt is missing"


async def test_a_token_in_the_url_is_ignored_and_never_echoed(
        http: aiohttp.ClientSession, edge_url: str, user: EdgeUser) -> None:
    for name in ("access_token", "token"):
        url = f"{edge_url}/v1/secret?{name}={user.access_token}"
        async with http.get(url) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "Jwt is missing"
            challenge = response.headers["www-authenticate"]
            assert challenge == 'Bearer realm="llmmesh"'
            assert user.access_token not in str(response.headers)
    async with http.get(f"{edge_url}/v1/secret", headers=user.bearer) as response:
        assert response.status == 200
        remaining = int(response.headers["x-ratelimit-remaining"])
    assert remaining == TIGHT_LIMIT - 1, "refused URL tokens were not charged to the user"


async def test_requirements_follow_the_route_that_matched(http: aiohttp.ClientSession,
                                                          edge_url: str,
                                                          shared_user: EdgeUser) -> None:
    async with http.get(f"{edge_url}/v1/private/index") as response:
        assert response.status == 200, "a public literal under a private wildcard"
        assert (await response.json())["method"] == "GetPrivateIndex"
    async with http.get(f"{edge_url}/v1/private/other") as response:
        assert response.status == 401
    async with http.get(f"{edge_url}/v1/private/other", headers=shared_user.bearer) as r:
        assert r.status == 200 and (await r.json())["method"] == "GetPrivate"


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", ""])
async def test_garbage_tokens(http: aiohttp.ClientSession, edge_url: str, token: str) -> None:
    status, body, _ = await refusal(http, f"{edge_url}/v1/users/me", token)
    assert status == 401 and body["code"] == 16


async def test_a_bad_token_is_refused_even_on_a_public_route(http: aiohttp.ClientSession,
                                                             edge_url: str) -> None:
    forged = mint(SigningKey.generate())
    status, _, _ = await refusal(http, f"{edge_url}/.well-known/jwks.json", forged)
    assert status == 401


async def test_client_identity_headers_never_reach_upstream(
        http: aiohttp.ClientSession, edge_url: str, user: EdgeUser) -> None:
    spoofed = {"x-user-id": "admin", "X-LLMMESH-Service-Token": "s" * 40,
               "x-username": "root", "x-custom": "kept"}
    async with http.get(f"{edge_url}/v1/things/a", headers=spoofed) as response:
        metadata = (await response.json())["metadata"]
    assert "x-user-id" not in metadata, "public route: nothing may replace a stripped header"
    assert "x-llmmesh-service-token" not in metadata and "x-username" not in metadata
    assert metadata["x-custom"] == "kept"
    async with http.get(f"{edge_url}/v1/secret",
                        headers={**spoofed, **user.bearer}) as response:
        assert response.status == 200
        metadata = (await response.json())["metadata"]
    assert metadata["x-user-id"] == user.user_id
    assert metadata["authorization"] == user.bearer["authorization"], "forwarded for re-checks"
    assert "x-llmmesh-service-token" not in metadata
    assert metadata["x-request-id"] == response.headers["x-request-id"]


async def test_internal_services_are_unreachable(http: aiohttp.ClientSession, edge_url: str,
                                                 shared_user: EdgeUser) -> None:
    async with http.post(f"{edge_url}/llmmesh.auth.v1.QuotaService/SetTokenLimit",
                         json={"userId": shared_user.user_id, "tokenLimit": "999999"},
                         headers=shared_user.bearer) as response:
        assert response.status == 404

