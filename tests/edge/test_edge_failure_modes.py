"""Edges configured differently from the suite's: the rate limiter unreachable (fail open
by default, fail closed when the spec says so), CORS origins from the environment, and
the local edge's settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from gateway.config import EdgeConfig, RateLimitServiceConfig
from mesh.redis_server import LocalRedis, free_port
from services.runtime.config import ConfigError, Env
from tests.conftest import mesh_env
from tests.edge.conftest import Edge, EdgeUser, Upstream, start_test_edge
from tests.edge.harness import TEST_SPEC


@pytest.fixture(params=[False, True], ids=["fail-open", "fail-closed"])
def broken_limiter_edge(request: pytest.FixtureRequest, auth_address: str,
                        test_upstream: Upstream,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, bool]]:
    deny: bool = request.param
    edge = start_test_edge(tmp_path_factory.mktemp("envoy-broken-limiter"), auth_address,
                           test_upstream.port, free_port(),  # nobody listens there
                           spec=replace(TEST_SPEC, ratelimit_failure_mode_deny=deny),
                           cors_origins=("https://app.example", "https://b.example"))
    yield edge, deny
    edge.envoy.stop()


async def test_an_unreachable_rate_limiter_fails_as_configured(
        broken_limiter_edge: tuple[Edge, bool], http: aiohttp.ClientSession,
        shared_user: EdgeUser) -> None:
    edge, deny = broken_limiter_edge
    async with http.get(f"{edge.url}/v1/secret", headers=shared_user.bearer) as response:
        if deny:
            assert response.status == 503
            assert (await response.json())["code"] == 14
        else:
            assert response.status == 200
            assert "x-ratelimit-limit" not in response.headers
    async with http.get(f"{edge.url}/v1/things/a", headers={"origin": "https://b.example"}) as r:
        assert r.status == (503 if deny else 200)
        assert r.headers["access-control-allow-origin"] == "https://b.example"
    async with http.get(f"{edge.url}/v1/things/a",
                        headers={"origin": TEST_SPEC.cors.allow_origins[0]}) as r:
        assert "access-control-allow-origin" not in r.headers, "the configured origins only"


def test_edge_and_rate_limit_config_from_the_environment(redis_server: LocalRedis,
                                                         data_dir: Path) -> None:
    env = mesh_env(redis_server, data_dir)
    for name in ("LLMMESH_EDGE_PORT", "LLMMESH_RATELIMIT_PORT", "LLMMESH_RATELIMIT_METRICS_PORT",
                 "LLMMESH_AUTH_PORT", "LLMMESH_CHAT_PORT"):
        env.pop(name, None)
    edge = EdgeConfig.from_env(Env(env))
    assert (edge.port, edge.admin_port) == (8080, 9901)
    assert edge.ratelimit == ("127.0.0.1", 50060) and edge.cors_origins is None
    assert edge.upstreams["auth"] == ("127.0.0.1", 50051)
    assert edge.upstreams["chat"] == ("127.0.0.1", 50052)
    custom = EdgeConfig.from_env(Env({**env, "LLMMESH_EDGE_CORS_ORIGINS": " https://a.example,,"
                                      "https://b.example ", "LLMMESH_AUTH_ADDRESS": "[::1]:7"}))
    assert custom.cors_origins == ("https://a.example", "https://b.example")
    assert custom.upstreams["auth"] == ("::1", 7)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        EdgeConfig.from_env(Env({**env, "LLMMESH_CHAT_ADDRESS": "nowhere"}))
    limiter = RateLimitServiceConfig.from_env(Env(env))
    assert (limiter.runtime.port, limiter.runtime.metrics_port) == (50060, 9105)
    assert limiter.rules_path.is_file() and limiter.redis_failure == "error"
    with pytest.raises(ConfigError, match="REDIS_FAILURE"):
        RateLimitServiceConfig.from_env(Env({**env, "LLMMESH_RATELIMIT_REDIS_FAILURE": "maybe"}))
