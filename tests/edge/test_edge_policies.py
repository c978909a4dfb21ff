"""Rate limiting (429 with headers, keyed by the verified user or the peer address,
never by a header), body size limits, CORS and request ids at the edge."""

from __future__ import annotations

import asyncio
import io

import aiohttp

from tests.edge.conftest import EdgeUser, register
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


async def test_bodies_over_the_limit_are_413(http: aiohttp.ClientSession, edge_url: str) -> None:
    size = TEST_SPEC.max_request_body_bytes
    big = b'{"message":"' + b"x" * (size - 14) + b'"}'
    assert len(big) == size
    async with http.post(f"{edge_url}/v1/fail", data=io.BytesIO(big)) as response:
        assert response.status == 200, "a body at the limit passes"
    async with http.post(f"{edge_url}/v1/fail", data=io.BytesIO(big + b" ")) as response:
        assert response.status == 413
        assert response.content_type == "text/plain"


async def test_cors_preflight_and_simple_requests(http: aiohttp.ClientSession,
                                                  edge_url: str) -> None:
    origin = TEST_SPEC.cors.allow_origins[0]
    preflight = {"origin": origin, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    async with http.options(f"{edge_url}/v1/users/me", headers=preflight) as response:
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"]
    async with http.get(f"{edge_url}/v1/users/me", headers={"origin": origin}) as response:
        assert response.status == 401, "CORS answers preflights, not the JWT check"
        assert response.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in response.headers["access-control-expose-headers"]
    stranger = {**preflight, "origin": "https://evil.example"}
    async with http.options(f"{edge_url}/v1/users/me", headers=stranger) as response:
        assert "access-control-allow-origin" not in response.headers
        assert response.status == 401, "a foreign preflight goes on like any request"


async def test_every_response_has_a_request_id(http: aiohttp.ClientSession,
                                               edge_url: str) -> None:
    ids = set()
    for path in ("/v1/things/a", "/v1/users/me", "/v1/nothing"):
        async with http.get(edge_url + path, headers={"x-request-id": "client-chosen"}) as r:
            ids.add(r.headers["x-request-id"])
    assert len(ids) == 3 and "client-chosen" not in ids
