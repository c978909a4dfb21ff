"""Identity fixtures: the OIDC stand-in, an auth server that trusts it, a chat server
wired to that auth, and a real Envoy in front of them, the session's document server and
a rate limit service of our own (tight limit on GetUsage), all on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml
from llmmesh.auth.v1 import api_keys_pb2, api_keys_pb2_grpc, auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2_grpc
from llmmesh.document.v1 import document_pb2_grpc

from gateway import deployment
from gateway.config import RateLimitServiceConfig
from gateway.envoy_config import ratelimit_rules
from gateway.envoy_process import EnvoyProcess
from gateway.local_edge import start_local_edge
from gateway.ratelimit.server import create_server as create_ratelimit_server
from gateway.spec import LLMMESH_SPEC, EdgeSpec, Limit, RouteClass
from mesh.redis_server import LocalRedis, free_port
from services.auth.config import AuthConfig
from services.auth.server import create_server as create_auth_server
from services.chat.config import ChatConfig
from services.chat.server import create_server as create_chat_server
from services.runtime.config import Env
from services.runtime.identity_providers import OidcIssuer
from services.runtime.server import MeshServer
from tests.chat.openai_server import OpenAIServer
from tests.conftest import mesh_env
from tests.helpers import LoggedIn, register_and_login
from tests.identity.idp import IdentityProvider

TIGHT = 5
GET_USAGE = "/llmmesh.auth.v1.AuthService/GetUsage"

IDENTITY_SPEC: EdgeSpec = replace(
    LLMMESH_SPEC,
    route_classes=(
        *(RouteClass(c.name, c.key, Limit(1000, "minute")) if c.name == "account" else c
          for c in LLMMESH_SPEC.route_classes),
        RouteClass("tight_user", "user", Limit(TIGHT, "minute")),
    ),
    method_classes={**LLMMESH_SPEC.method_classes, GET_USAGE: "tight_user"},
    ratelimit_timeout_seconds=2.0,
)


@pytest.fixture(scope="session")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
async def sso_auth_server(redis_server: LocalRedis, data_dir: Path,
                          idp: IdentityProvider) -> AsyncIterator[MeshServer]:
    """Auth trusting the stand-in (same Redis and signing key as the session's auth)."""
    env = mesh_env(redis_server, data_dir,
                   LLMMESH_OIDC_ISSUERS=json.dumps([idp.config()]))
    server = create_auth_server(AuthConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def sso_auth_address(sso_auth_server: MeshServer) -> str:
    return f"127.0.0.1:{sso_auth_server.port}"


@pytest.fixture(scope="session")
async def sso_channel(sso_auth_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(sso_auth_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def users(sso_channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(sso_channel)


@pytest.fixture(scope="session")
def keys(sso_channel: grpc.aio.Channel) -> api_keys_pb2_grpc.ApiKeyServiceStub:
    return api_keys_pb2_grpc.ApiKeyServiceStub(sso_channel)


@pytest.fixture(scope="session")
async def llm() -> AsyncIterator[OpenAIServer]:
    server = OpenAIServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def sso_chat_server(redis_server: LocalRedis, data_dir: Path, sso_auth_address: str,
                          document_address: str, llm: OpenAIServer
                          ) -> AsyncIterator[MeshServer]:
    models = [{"id": "echo", "provider": "openai", "model": "echo-1", "base_url": llm.base_url,
               "api_key": "test-key", "max_output_tokens": 256, "default_max_tokens": 64,
               "default": True}]
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=sso_auth_address,
                   LLMMESH_DOCUMENT_ADDRESS=document_address,
                   LLMMESH_CHAT_MODELS=json.dumps(models))
    server = create_chat_server(ChatConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
async def chat(sso_chat_server: MeshServer) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sso_chat_server.port}") as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel)


@pytest.fixture(scope="session")
def documents(document_stub: document_pb2_grpc.DocumentServiceStub
              ) -> document_pb2_grpc.DocumentServiceStub:
    return document_stub


@pytest.fixture(scope="session")
async def identity_ratelimit(redis_server: LocalRedis, data_dir: Path,
                             tmp_path_factory: pytest.TempPathFactory
                             ) -> AsyncIterator[MeshServer]:
    rules = tmp_path_factory.mktemp("identity-ratelimit") / "ratelimit.yaml"
    rules.write_text(yaml.safe_dump(ratelimit_rules(IDENTITY_SPEC), sort_keys=False))
    env = mesh_env(redis_server, data_dir, LLMMESH_RATELIMIT_PORT="0",
                   LLMMESH_RATELIMIT_METRICS_PORT="0", LLMMESH_RATELIMIT_CONFIG=str(rules),
                   LLMMESH_RATELIMIT_KEY_PREFIX=f"identity-{uuid.uuid4().hex[:8]}:")
    server = create_ratelimit_server(RateLimitServiceConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@dataclass
class IdentityEdge:
    url: str
    grpc_address: str
    envoy: EnvoyProcess


@pytest.fixture(scope="session")
def identity_edge(sso_auth_server: MeshServer, sso_chat_server: MeshServer,
                  document_server: MeshServer, identity_ratelimit: MeshServer,
                  idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[IdentityEdge]:
    """Envoy with the identity spec; the stand-in configured as an OIDC issuer."""
    directory = tmp_path_factory.mktemp("identity-envoy")
    local = "127.0.0.1"
    assert sso_auth_server.port and sso_chat_server.port and document_server.port
    assert identity_ratelimit.port
    target = deployment.local(
        IDENTITY_SPEC, str(directory), listener_port=0, admin_port=0,
        upstreams={"auth": (local, sso_auth_server.port), "chat": (local, sso_chat_server.port),
                   "document": (local, document_server.port),
                   "embedding": (local, free_port())},
        ratelimit=(local, identity_ratelimit.port),
        oidc_issuers=(OidcIssuer.model_validate(idp.config()),))
    envoy = start_local_edge(IDENTITY_SPEC, target, log_path=directory / "envoy.log",
                             concurrency=1)
    port = envoy.listener_port("edge")
    yield IdentityEdge(f"http://{local}:{port}", f"{local}:{port}", envoy)
    envoy.stop()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def owner(users: auth_pb2_grpc.AuthServiceStub) -> LoggedIn:
    return await register_and_login(users)


async def create_key(keys: api_keys_pb2_grpc.ApiKeyServiceStub, owner: LoggedIn,
                     *scopes: str, **fields: object) -> api_keys_pb2.CreateApiKeyResponse:
    """A new key of `owner`'s with `scopes` (none: all)."""
    created: api_keys_pb2.CreateApiKeyResponse = await keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(parent="users/me", api_key=api_keys_pb2.ApiKey(
            display_name="test key", scopes=list(scopes), **fields)),  # type: ignore[arg-type]
        metadata=owner.metadata)
    return created


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)
