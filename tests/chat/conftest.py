"""Chat fixtures: the OpenAI-compatible test server, a chat server wired to it and to
the real auth server and Redis, and stubs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2_grpc

from mesh.redis_server import LocalRedis, free_port
from services.chat.config import ChatConfig
from services.chat.server import create_server
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.chat.openai_server import OpenAIServer
from tests.conftest import mesh_env
from tests.helpers import LoggedIn, register_and_login

HISTORY_TURNS = 3
DISCONNECT_GRACE_SECONDS = 0.3


@pytest.fixture(scope="session")
async def model_server() -> AsyncIterator[OpenAIServer]:
    server = OpenAIServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def fresh_script(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with the default script and an empty request log."""
    if "model_server" in request.fixturenames:
        request.getfixturevalue("model_server").reset()
    yield


def model_entries(base_url: str, dead_url: str) -> list[dict[str, object]]:
    return [
        {"id": "echo", "provider": "openai", "model": "echo-1", "base_url": base_url,
         "api_key": "test-key", "max_output_tokens": 256, "default_max_tokens": 64,
         "default": True},
        {"id": "slow", "provider": "openai", "base_url": base_url, "api_key": "k",
         "timeout_seconds": 0.3, "max_output_tokens": 64, "default_max_tokens": 16},
        {"id": "down", "provider": "openai", "base_url": dead_url, "api_key": "k"},
    ]


@pytest.fixture(scope="session")
def chat_env(redis_server: LocalRedis, data_dir: Path, auth_address: str,
             model_server: OpenAIServer) -> dict[str, str]:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    return mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                    LLMMESH_CHAT_MODELS=json.dumps(model_entries(model_server.base_url, dead)),
                    LLMMESH_CHAT_HISTORY_TURNS=str(HISTORY_TURNS),
                    # A turn nobody reads is cancelled soon (tests/chat/test_resume.py).
                    LLMMESH_CHAT_DISCONNECT_GRACE_SECONDS=str(DISCONNECT_GRACE_SECONDS),
                    LLMMESH_CHAT_TURN_HEARTBEAT_SECONDS="0.05")


@pytest.fixture(scope="session")
async def chat_server(chat_env: dict[str, str]) -> AsyncIterator[MeshServer]:
    server = create_server(ChatConfig.from_env(Env(chat_env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
async def chat_stub(chat_server: MeshServer) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{chat_server.port}") as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel)


@pytest.fixture
async def bob(auth_stub) -> LoggedIn:  # type: ignore[no-untyped-def]
    return await register_and_login(auth_stub)
