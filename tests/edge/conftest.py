"""Fixtures of the edge suite: the rate limit service, the test upstream and the Python
edge, all over real sockets with the session's Redis and auth server; or an external
edge named by LLMMESH_EDGE_URL (see tests/edge/harness.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import llmmesh
import pytest
import yaml

from gateway.app import EdgeServer
from gateway.config import EdgeConfig, RateLimitServiceConfig
from gateway.descriptors import load_descriptor_set
from gateway.envoy_config import ratelimit_rules
from gateway.ratelimit.server import create_server as create_ratelimit_server
from services.mesh.redis_server import LocalRedis
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import mesh_env
from tests.edge.harness import TEST_SPEC, TEST_UPSTREAM, TEST_UPSTREAM_PORT, merge
from tests.edge.upstream import EdgeTestServicer, compile_descriptor_set, start_upstream
from tests.helpers import PASSWORD, unique_username

EXTERNAL_EDGE = Env().optional("LLMMESH_EDGE_URL")


@dataclass
class Upstream:
    port: int
    servicer: EdgeTestServicer


@pytest.fixture(scope="session")
def edge_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The API's descriptor set plus edgetest.proto, as one file."""
    out = tmp_path_factory.mktemp("edge-descriptors")
    test_files = compile_descriptor_set(out / "edgetest.binpb")
    merged = merge(load_descriptor_set(llmmesh.descriptor_set_path()), test_files)
    path = out / "edge.binpb"
    path.write_bytes(merged.SerializeToString())
    return path


@pytest.fixture(scope="session")
async def test_upstream(edge_descriptor_set: Path) -> AsyncIterator[Upstream]:
    port = (Env().int("LLMMESH_EDGE_TEST_UPSTREAM_PORT", TEST_UPSTREAM_PORT)
            if EXTERNAL_EDGE else 0)
    server, bound, servicer = await start_upstream(load_descriptor_set(edge_descriptor_set),
                                                   port)
    yield Upstream(bound, servicer)
    await server.stop(0)


@pytest.fixture(scope="session")
async def ratelimit_server(redis_server: LocalRedis, data_dir: Path,
                           tmp_path_factory: pytest.TempPathFactory
                           ) -> AsyncIterator[MeshServer]:
    rules = tmp_path_factory.mktemp("ratelimit") / "ratelimit.yaml"
    rules.write_text(yaml.safe_dump(ratelimit_rules(TEST_SPEC), sort_keys=False))
    env = mesh_env(redis_server, data_dir, LLMMESH_RATELIMIT_PORT="0",
                   LLMMESH_RATELIMIT_METRICS_PORT="0", LLMMESH_RATELIMIT_CONFIG=str(rules),
                   LLMMESH_RATELIMIT_KEY_PREFIX=f"test-{uuid.uuid4().hex[:8]}:")
    server = create_ratelimit_server(RateLimitServiceConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def ratelimit_address(ratelimit_server: MeshServer) -> str:
    return f"127.0.0.1:{ratelimit_server.port}"


@pytest.fixture(scope="session")
async def local_edge(redis_server: LocalRedis, auth_address: str, ratelimit_address: str,
                     test_upstream: Upstream, edge_descriptor_set: Path,
                     data_dir: Path) -> AsyncIterator[EdgeServer]:
    env = mesh_env(redis_server, data_dir, LLMMESH_EDGE_PORT="0",
                   LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_RATELIMIT_ADDRESS=ratelimit_address,
                   LLMMESH_EDGE_DESCRIPTOR_SET=str(edge_descriptor_set))
    config = EdgeConfig.from_env(Env(env))
    config = replace(config, upstream_addresses={
        **config.upstream_addresses, TEST_UPSTREAM: f"127.0.0.1:{test_upstream.port}"})
    server = EdgeServer(config, TEST_SPEC)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def edge_url(request: pytest.FixtureRequest, test_upstream: Upstream) -> str:
    """Base URL of the edge under test (the in-process Python edge by default)."""
    if EXTERNAL_EDGE:
        return EXTERNAL_EDGE.rstrip("/")
    server: EdgeServer = request.getfixturevalue("local_edge")
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@dataclass
class EdgeUser:
    user_id: str
    username: str
    access_token: str
    refresh_token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


async def register(http: aiohttp.ClientSession, edge_url: str) -> EdgeUser:
    """A new user, registered and logged in through the edge's REST routes."""
    username = unique_username("edge")
    async with http.post(f"{edge_url}/v1/users", json={
            "user": {"username": username, "email": f"{username}@example.com"},
            "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        user = await response.json()
    async with http.post(f"{edge_url}/v1/auth:login",
                         json={"username": username, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        tokens = (await response.json())["tokens"]
    return EdgeUser(user["name"].removeprefix("users/"), username, tokens["accessToken"],
                    tokens["refreshToken"])


@pytest.fixture
async def user(http: aiohttp.ClientSession, edge_url: str) -> EdgeUser:
    return await register(http, edge_url)


@pytest.fixture(scope="session")
async def shared_user(http: aiohttp.ClientSession, edge_url: str) -> EdgeUser:
    return await register(http, edge_url)


@pytest.fixture(scope="session")
def signing_key_pem(data_dir: Path) -> bytes | None:
    """Auth's signing key, to mint tokens auth would have issued (e.g. expired ones)."""
    configured = Env().optional("LLMMESH_EDGE_TEST_SIGNING_KEY_FILE")
    if configured:
        return Path(configured).read_bytes()
    if EXTERNAL_EDGE:
        return None
    return (data_dir / "keys" / "auth-signing-key.pem").read_bytes()
