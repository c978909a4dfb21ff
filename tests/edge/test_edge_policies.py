"""Rate limiting (429 with headers, keyed by the verified user or the peer address,
never by a header), body size limits (413 for REST, unbuffered gRPC streams), CORS
preflights on every route, and request ids at the edge."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import grpc
import pytest

from gateway.descriptors import build_pool, load_descriptor_set, message_class
from tests.edge.conftest import EdgeUser, Upstream, register
from tests.edge.harness import TEST_SPEC, TIGHT_LIMIT


async def until_limited(http: aiohttp.ClientSession, url: str,
                        headers: dict[str, str]) -> tuple[list[int], aiohttp.ClientResponse,
                                                          bytes]:
    """Statuses of requests sent one by one until a 429 (bounded: a window may roll
    over once, so at most twice the limit and one more get through)."""
    statuses: list[int] = []
    for _ in range(2 * TIGHT_LIMIT + 2):
        async with http.get(url, headers=headers) as response:
            statuses.append(response.status)
            if response.status == 429:
                return statuses, response, await response.read()
    raise AssertionError(f"never limited: {statuses}")


async def test_per_user_limit_with_headers(http: aiohttp.ClientSession, edge_url: str,
                                           user: EdgeUser) -> None:
    async with http.get(f"{edge_url}/v1/secret", headers=user.bearer) as response:
        assert response.status == 200
        assert response.headers["x-ratelimit-limit"].startswith(f"{TIGHT_LIMIT}, ")
        remaining = int(response.headers["x-ratelimit-remaining"])
        assert remaining == TIGHT_LIMIT - 1
    statuses, limited, body = await until_limited(http, f"{edge_url}/v1/secret", user.bearer)
    assert set(statuses[:-1]) == {200}
    assert limited.headers["x-envoy-ratelimited"] == "true"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) <= 60
    assert limited.content_type == "application/json"
    assert b'"code":8' in body
    # Another user is counted apart, whatever headers the first one sends.
    other = await register(http, edge_url)
    async with http.get(f"{edge_url}/v1/secret",
                        headers={**other.bearer, "x-user-id": user.user_id}) as response:
        assert response.status == 200


async def test_per_address_limit_ignores_forwarded_headers(http: aiohttp.ClientSession,
                                                           edge_url: str) -> None:
    spoof = {"x-forwarded-for": "203.0.113.7", "x-real-ip": "203.0.113.8"}
    _, limited, _ = await until_limited(http, f"{edge_url}/v1/limited", spoof)
    assert limited.headers["x-envoy-ratelimited"] == "true"
    async with http.get(f"{edge_url}/v1/limited",
                        headers={"x-forwarded-for": "198.51.100.1"}) as response:
        assert response.status == 429, "a new X-Forwarded-For must not buy a new bucket"


async def test_concurrent_requests_do_not_slip_past_the_limit(edge_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        user = await register(http, edge_url)

        async def one() -> int:
            async with http.get(f"{edge_url}/v1/secret", headers=user.bearer) as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(30)))
    assert statuses.count(200) <= 2 * TIGHT_LIMIT and statuses.count(429) >= 30 - 2 * TIGHT_LIMIT


async def test_bodies_over_the_limit_are_413_before_any_upstream_call(
        http: aiohttp.ClientSession, edge_url: str, test_upstream: Upstream) -> None:
    size = TEST_SPEC.max_request_body_bytes
    big = b'{"message":"' + b"x" * (size - 14) + b'"}'
    assert len(big) == size
    async with http.post(f"{edge_url}/v1/fail", data=io.BytesIO(big)) as response:
        assert response.status == 200, "a body at the limit passes"
    calls = len(test_upstream.servicer.calls)
    for oversize in (big + b" ", b'{"message":"' + b"x" * (17 * 1024 * 1024) + b'"}'):
        async with http.post(f"{edge_url}/v1/fail", data=io.BytesIO(oversize)) as response:
            assert response.status == 413, "never 429: clients retry those"
            assert await response.json() == {"code": 8, "message": "Payload Too Large"}
    assert len(test_upstream.servicer.calls) == calls, "the upstream saw nothing"


async def test_grpc_client_streams_larger_than_the_rest_limit_pass(
        edge_url: str, edge_descriptor_set: Path, test_upstream: Upstream) -> None:
    """gRPC uploads are not buffered: 24 MiB in 1 MiB frames reach the upstream."""
    pool = build_pool(load_descriptor_set(edge_descriptor_set))
    chunk = message_class(pool, "edgetest.v1.UploadChunk")
    summary = message_class(pool, "edgetest.v1.UploadSummary")
    frames = 24
    async with grpc.aio.insecure_channel(edge_url.removeprefix("http://")) as channel:
        upload = channel.stream_unary("/edgetest.v1.EdgeTestService/Upload",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=summary.FromString)
        answer = await upload(iter([chunk(data=b"z" * (1024 * 1024))] * frames), timeout=60)
    assert (answer.chunks, answer.bytes) == (frames, frames * 1024 * 1024)
    assert frames * 1024 * 1024 > TEST_SPEC.max_request_body_bytes


ROUTES_TO_PREFLIGHT = [("POST", "/v1/auth:login"), ("POST", "/v1/users"),
                       ("GET", "/v1/users/me"), ("POST", "/v1/conversations:streamChat"),
                       ("DELETE", "/v1/documents/abc"), ("GET", "/.well-known/jwks.json")]


@pytest.mark.parametrize("method, path", ROUTES_TO_PREFLIGHT)
async def test_cors_preflight_is_answered_on_every_route(
        http: aiohttp.ClientSession, edge_url: str, method: str, path: str) -> None:
    origin = TEST_SPEC.cors.allow_origins[0]
    preflight = {"origin": origin, "access-control-request-method": method,
                 "access-control-request-headers": "authorization, content-type"}
    async with http.options(edge_url + path, headers=preflight) as response:
        assert response.status == 200, await response.text()
        assert response.headers["access-control-allow-origin"] == origin
        assert method in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"]
        assert "www-authenticate" not in response.headers


async def test_cors_simple_requests_and_foreign_origins(http: aiohttp.ClientSession,
                                                        edge_url: str) -> None:
    origin = TEST_SPEC.cors.allow_origins[0]
    async with http.get(f"{edge_url}/v1/users/me", headers={"origin": origin}) as response:
        assert response.status == 401, "CORS answers preflights, not the JWT check"
        assert response.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in response.headers["access-control-expose-headers"]
    dressed = {"access-control-request-method": "POST", "content-type": "application/grpc"}
    async with http.options(f"{edge_url}/v1/users/me", headers=dressed) as response:
        # Not the preflight route: a gRPC-style refusal (grpc-status 16), not a CORS answer.
        assert response.headers.get("grpc-status") == "16", response.headers
        assert "access-control-allow-methods" not in response.headers
    stranger = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    async with http.options(f"{edge_url}/v1/auth:login", headers=stranger) as response:
        assert "access-control-allow-origin" not in response.headers
        assert response.status == 404, "a foreign preflight is an unknown OPTIONS request"
        assert (await response.json())["code"] == 5


async def test_every_response_has_a_request_id(http: aiohttp.ClientSession,
                                               edge_url: str) -> None:
    ids = set()
    for path in ("/v1/things/a", "/v1/users/me", "/v1/nothing"):
        async with http.get(edge_url + path, headers={"x-request-id": "client-chosen"}) as r:
            ids.add(r.headers["x-request-id"])
    assert len(ids) == 3 and "client-chosen" not in ids
