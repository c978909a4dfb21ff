"""API keys and OIDC tokens through the real Envoy edge: REST and native gRPC, revocation
within seconds, scopes, rate limits counted for the owner, and every refusal a 401 with
the edge's JSON error body."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from llmmesh.auth.v1 import api_keys_pb2, auth_pb2, auth_pb2_grpc

from services.runtime.server import MeshServer
from tests.helpers import LoggedIn, clear_of_window_edge, eventually
from tests.identity.conftest import TIGHT, IdentityEdge, bearer, create_key
from tests.identity.idp import IdentityProvider


async def _get(http: aiohttp.ClientSession, url: str, token: str | None
               ) -> tuple[int, dict[str, object]]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_a_key_works_over_rest_and_grpc_through_the_edge(
        keys, http: aiohttp.ClientSession, identity_edge: IdentityEdge,
        owner: LoggedIn) -> None:
    secret = (await create_key(keys, owner)).secret
    status, body = await _get(http, f"{identity_edge.url}/v1/users/me", secret)
    assert (status, body["name"]) == (200, owner.user.name)
    status, _ = await _get(http, f"{identity_edge.url}/v1/conversations", secret)
    assert status == 200
    status, _ = await _get(http, f"{identity_edge.url}/v1/documents", secret)
    assert status == 200
    async with grpc.aio.insecure_channel(identity_edge.grpc_address) as channel:
        me = await auth_pb2_grpc.AuthServiceStub(channel).GetUser(
            auth_pb2.GetUserRequest(name="users/me"), metadata=bearer(secret))
    assert me.name == owner.user.name


async def test_a_revoked_key_is_refused_at_the_edge_within_seconds(
        keys, http: aiohttp.ClientSession, identity_edge: IdentityEdge,
        owner: LoggedIn) -> None:
    created = await create_key(keys, owner)
    url = f"{identity_edge.url}/v1/users/me"
    assert (await _get(http, url, created.secret))[0] == 200
    await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=created.api_key.name),
                            metadata=owner.metadata)
    async def paced() -> tuple[int, dict[str, object]]:
        # The edge reuses an exchange for up to 2 s (auth for 1 s more): polling flat
        # out that long would meet the owner's rate limit (120 a minute) first.
        await asyncio.sleep(0.1)
        return await _get(http, url, created.secret)

    status, body = await eventually(paced, lambda answer: answer[0] != 200, within=5,
                                    what="the revoked key refused at the edge")
    assert (status, body) == (401, {"code": 16, "message": "API key was revoked"})


def _exchanges(auth: MeshServer) -> float:
    """How many ext_authz checks auth has answered OK."""
    return auth.metrics.registry.get_sample_value(
        "llmmesh_grpc_server_handling_seconds_count",
        {"grpc_service": "envoy.service.auth.v3.Authorization", "grpc_method": "Check",
         "grpc_code": "OK"}) or 0.0


async def test_the_edge_reuses_a_keys_exchange_for_a_moment(
        keys, http: aiohttp.ClientSession, identity_edge: IdentityEdge,
        owner: LoggedIn, sso_auth_server: MeshServer) -> None:
    secret = (await create_key(keys, owner)).secret
    before = _exchanges(sso_auth_server)
    for _ in range(10):  # well inside the edge's 2 s
        async with http.get(f"{identity_edge.url}/v1/users/me",
                            headers={"authorization": f"bearer {secret}"}) as response:
            assert response.status == 200
            assert (await response.json())["name"] == owner.user.name
            # The access token the key was exchanged for stays inside the mesh.
            assert not any("eyJ" in value for value in response.headers.values()), (
                response.headers)
    async with grpc.aio.insecure_channel(identity_edge.grpc_address) as channel:
        me = await auth_pb2_grpc.AuthServiceStub(channel).GetUser(
            auth_pb2.GetUserRequest(name="users/me"), metadata=bearer(secret))
    assert me.name == owner.user.name
    # One exchange served eleven requests (two if a clock second turned meanwhile).
    assert 1 <= _exchanges(sso_auth_server) - before <= 2


async def test_the_edge_reuses_an_oidc_tokens_exchange_for_a_moment(
        http: aiohttp.ClientSession, identity_edge: IdentityEdge, idp: IdentityProvider,
        sso_auth_server: MeshServer) -> None:
    subject = uuid.uuid4().hex
    token = idp.token(subject, preferred_username="cached-sso")
    url = f"{identity_edge.url}/v1/users/me"
    status, first = await _get(http, url, token)
    assert status == 200
    before = _exchanges(sso_auth_server)
    for _ in range(10):
        assert await _get(http, url, token) == (200, first)
    # At most one more exchange, when a clock second turned between two requests.
    assert _exchanges(sso_auth_server) - before <= 1
    # Another token of the same user is its own exchange, not a cache hit.
    before = _exchanges(sso_auth_server)
    status, again = await _get(http, url, idp.token(subject, preferred_username="cached-sso"))
    assert status == 200 and again["name"] == first["name"]
    assert _exchanges(sso_auth_server) - before == 1


async def test_scopes_at_the_edge(keys, http: aiohttp.ClientSession,
                                  identity_edge: IdentityEdge, owner: LoggedIn) -> None:
    chat_only = (await create_key(keys, owner, "chat")).secret
    status, body = await _get(http, f"{identity_edge.url}/v1/documents", chat_only)
    assert (status, body["code"]) == (403, 7)
    async with http.post(f"{identity_edge.url}/v1/users/me/apiKeys",
                         json={"displayName": "from a key"},
                         headers={"authorization": f"Bearer {chat_only}"}) as response:
        assert response.status == 403


async def test_rate_limits_count_for_the_key_owner(keys, http: aiohttp.ClientSession,
                                                   identity_edge: IdentityEdge,
                                                   owner: LoggedIn) -> None:
    secret = (await create_key(keys, owner)).secret
    url = f"{identity_edge.url}/v1/users/me/usages/current"
    token = owner.tokens.access_token
    await clear_of_window_edge()  # exact counts: all in one minute window
    statuses = [(await _get(http, url, credential))[0]
                for credential in [token, secret] * TIGHT + [secret]]
    assert statuses[:TIGHT] == [200] * TIGHT
    assert set(statuses[TIGHT:]) == {429}


async def test_oidc_tokens_at_the_edge(http: aiohttp.ClientSession,
                                       identity_edge: IdentityEdge,
                                       idp: IdentityProvider) -> None:
    subject = uuid.uuid4().hex
    url = f"{identity_edge.url}/v1/users/me"
    status, body = await _get(http, url, idp.token(subject, preferred_username="edge-sso"))
    assert status == 200 and str(body["username"]).startswith("edge-sso")
    async with grpc.aio.insecure_channel(identity_edge.grpc_address) as channel:
        me = await auth_pb2_grpc.AuthServiceStub(channel).GetUser(
            auth_pb2.GetUserRequest(name="users/me"),
            metadata=bearer(idp.token(subject, algorithm="ES256")))
    assert me.name == body["name"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (idp.token(subject, signing_key=stranger),
                  idp.token(subject, issuer="https://evil.example.com"),
                  idp.token(subject, audience="someone-else"),
                  idp.token(subject, lifetime=-120)):
        status, body = await _get(http, url, token)
        assert status == 401 and body["code"] == 16, body


@pytest.mark.parametrize("token", [None, "llmk_" + "A" * 51, "llmk_x", "not-a-jwt"])
async def test_missing_and_bad_credentials_are_401_as_before(
        http: aiohttp.ClientSession, identity_edge: IdentityEdge, token: str | None) -> None:
    status, body = await _get(http, f"{identity_edge.url}/v1/conversations", token)
    assert status == 401 and body["code"] == 16 and body["message"], body
    if token is None:
        assert body["message"] == "Jwt is missing"
