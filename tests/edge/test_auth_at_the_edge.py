"""JWT checks at the edge (jwt_authn's outcomes), the public routes, and the identity
headers a client may not set."""

from __future__ import annotations

import time
import uuid

import aiohttp
import jwt
import pytest

from services.auth.keys import SigningKey
from tests.edge.conftest import EdgeUser
from tests.edge.harness import TEST_SPEC


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
    assert challenge.startswith('Bearer realm="') and "invalid_token" not in challenge


async def test_forged_token_with_the_real_kid(http: aiohttp.ClientSession, edge_url: str,
                                              shared_user: EdgeUser) -> None:
    real_kid = jwt.get_unverified_header(shared_user.access_token)["kid"]
    forged = mint(SigningKey.generate(), kid=real_kid, sub=shared_user.user_id)
    status, body, challenge = await refusal(http, f"{edge_url}/v1/users/me", forged)
    assert (status, body["message"]) == (401, "Jwt verification fails")
    assert 'error="invalid_token"' in challenge


async def test_expired_token(http: aiohttp.ClientSession, edge_url: str,
                             signing_key_pem: bytes | None) -> None:
    if signing_key_pem is None:
        pytest.skip("set LLMMESH_EDGE_TEST_SIGNING_KEY_FILE to auth's signing key")
    key = SigningKey.from_pem(signing_key_pem)
    now = int(time.time())
    expired = mint(key, iat=now - 3600, nbf=now - 3600, exp=now - 600)
    status, body, _ = await refusal(http, f"{edge_url}/v1/users/me", expired)
    assert (status, body["message"]) == (401, "Jwt is expired")
    other_audience = mint(key, aud="somebody-else")
    status, body, _ = await refusal(http, f"{edge_url}/v1/users/me", other_audience)
    assert (status, body) == (403, {"code": 7, "message": "Audiences in Jwt are not allowed"})


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

