"""Python-edge behaviour that needs a second, differently configured edge (skipped
against an external edge): the rate limiter's failure modes, CORS from the
environment, and the edge's configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from gateway.app import EdgeServer
from gateway.config import EdgeConfig, RateLimitServiceConfig
from services.mesh.redis_server import LocalRedis, free_port
from services.runtime.config import ConfigError, Env
from tests.conftest import mesh_env
from tests.edge.conftest import EXTERNAL_EDGE, EdgeUser, Upstream
from tests.edge.harness import TEST_SPEC, TEST_UPSTREAM

pytestmark = pytest.mark.skipif(bool(EXTERNAL_EDGE), reason="configures its own Python edge")


async def start_edge(redis_server: LocalRedis, data_dir: Path, auth_address: str,
                     upstream: Upstream, descriptors: Path, deny: bool,
                     **extra: str) -> EdgeServer:
    env = mesh_env(redis_server, data_dir, LLMMESH_EDGE_PORT="0",
                   LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_RATELIMIT_ADDRESS=f"127.0.0.1:{free_port()}",  # nobody there
                   LLMMESH_EDGE_DESCRIPTOR_SET=str(descriptors), **extra)
    config = EdgeConfig.from_env(Env(env))
    config = replace(config, upstream_addresses={
        **config.upstream_addresses, TEST_UPSTREAM: f"127.0.0.1:{upstream.port}"})
    server = EdgeServer(config, replace(TEST_SPEC, ratelimit_failure_mode_deny=deny))
    await server.start()
    return server


@pytest.fixture(params=[False, True], ids=["fail-open", "fail-closed"])
async def broken_limiter_edge(request: pytest.FixtureRequest, redis_server: LocalRedis,
                              data_dir: Path, auth_address: str, test_upstream: Upstream,
                              edge_descriptor_set: Path) -> AsyncIterator[tuple[str, bool]]:
    server = await start_edge(redis_server, data_dir, auth_address, test_upstream,
                              edge_descriptor_set, request.param,
                              LLMMESH_EDGE_CORS_ORIGINS="https://app.example, https://b.example")
    yield f"http://127.0.0.1:{server.port}", request.param
    await server.stop()


async def test_an_unreachable_rate_limiter_fails_as_configured(
        broken_limiter_edge: tuple[str, bool], http: aiohttp.ClientSession,
        shared_user: EdgeUser) -> None:
    url, deny = broken_limiter_edge
    async with http.get(f"{url}/v1/secret", headers=shared_user.bearer) as response:
        if deny:
            assert response.status == 503
            assert (await response.json())["code"] == 14
        else:
            assert response.status == 200
            assert "x-ratelimit-limit" not in response.headers
    async with http.get(f"{url}/v1/things/a", headers={"origin": "https://b.example"}) as r:
        assert r.status == (503 if deny else 200)
        assert r.headers["access-control-allow-origin"] == "https://b.example"


def test_edge_and_rate_limit_config_from_the_environment(redis_server: LocalRedis,
                                                         data_dir: Path) -> None:
    env = mesh_env(redis_server, data_dir)
    for name in ("LLMMESH_EDGE_PORT", "LLMMESH_RATELIMIT_PORT", "LLMMESH_RATELIMIT_METRICS_PORT"):
        env.pop(name, None)
    edge = EdgeConfig.from_env(Env(env))
    assert edge.runtime.port == 8080 and edge.ratelimit_address == "127.0.0.1:50060"
    assert edge.descriptor_set.is_file() and edge.cors_origins is None
    limiter = RateLimitServiceConfig.from_env(Env(env))
    assert (limiter.runtime.port, limiter.runtime.metrics_port) == (50060, 9105)
    assert limiter.rules_path.is_file() and limiter.redis_failure == "error"
    with pytest.raises(ConfigError, match="REDIS_FAILURE"):
        RateLimitServiceConfig.from_env(Env({**env, "LLMMESH_RATELIMIT_REDIS_FAILURE": "maybe"}))
