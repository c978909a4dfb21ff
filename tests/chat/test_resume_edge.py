"""Resume through the real Envoy edge over REST: a StreamChat read as Server-Sent Events
is dropped at a random point and resumed with `POST /v1/{turn}:resume`, also as SSE; the
turn is cancelled with `POST /v1/{turn}:cancel`."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway import deployment
from gateway.config import RateLimitServiceConfig
from gateway.envoy_config import ratelimit_rules
from gateway.envoy_process import EnvoyProcess
from gateway.local_edge import start_local_edge
from gateway.ratelimit.server import create_server as create_ratelimit_server
from gateway.spec import LLMMESH_SPEC
from mesh.redis_server import LocalRedis, free_port
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.chat.openai_server import OpenAIServer
from tests.chat.test_resume import REPLY, _slow
from tests.conftest import mesh_env
from tests.helpers import LoggedIn


@pytest.fixture(scope="module")
async def ratelimit(redis_server: LocalRedis, data_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MeshServer]:
    rules = tmp_path_factory.mktemp("resume-ratelimit") / "ratelimit.yaml"
    rules.write_text(yaml.safe_dump(ratelimit_rules(LLMMESH_SPEC), sort_keys=False))
    env = mesh_env(redis_server, data_dir, LLMMESH_RATELIMIT_PORT="0",
                   LLMMESH_RATELIMIT_METRICS_PORT="0", LLMMESH_RATELIMIT_CONFIG=str(rules),
                   LLMMESH_RATELIMIT_KEY_PREFIX=f"resume-{uuid.uuid4().hex[:8]}:")
    server = create_ratelimit_server(RateLimitServiceConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
def edge(auth_address: str, chat_server: MeshServer, ratelimit: MeshServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Envoy with the product's spec in front of the session's auth and chat servers."""
    directory = tmp_path_factory.mktemp("resume-envoy")
    nobody = ("127.0.0.1", free_port())
    assert chat_server.port is not None and ratelimit.port is not None
    target = deployment.local(
        LLMMESH_SPEC, str(directory), listener_port=0, admin_port=0,
        upstreams={**{u.name: nobody for u in LLMMESH_SPEC.upstreams},
                   "auth": ("127.0.0.1", int(auth_address.rpartition(":")[2])),
                   "chat": ("127.0.0.1", chat_server.port)},
        ratelimit=("127.0.0.1", ratelimit.port))
    envoy: EnvoyProcess = start_local_edge(LLMMESH_SPEC, target,
                                           log_path=directory / "envoy.log", concurrency=1)
    try:
        yield f"http://127.0.0.1:{envoy.listener_port('edge')}"
    finally:
        envoy.stop()


async def _sse(response: aiohttp.ClientResponse, until: int | None = None
               ) -> list[dict[str, Any]]:
    """The events of an SSE response: all of them, or the first `until` (then the
    connection is dropped)."""
    assert response.status == 200, await response.text()
    events: list[dict[str, Any]] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            if until is not None and len(events) >= until:
                response.close()
                break
    return events


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"]["text"] for e in events if "delta" in e)


async def test_a_dropped_sse_stream_resumes_over_rest(
        edge: str, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow())
    headers = {"authorization": f"Bearer {alice.tokens.access_token}"}
    cut_at = random.randint(2, 30)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(f"{edge}/v1/conversations:streamChat",
                             json={"message": "talk"}, headers=headers) as response:
            seen = await _sse(response, until=cut_at)
        turn = seen[0]["start"]["turn"]
        assert turn.startswith(seen[0]["start"]["conversation"] + "/turns/")
        last = int(seen[-1]["sequence"])  # int64: a JSON string
        async with http.post(f"{edge}/v1/{turn}:resume", json={"afterSequence": str(last)},
                             headers=headers) as response:
            rest = await _sse(response)
        whole = seen + rest
        assert [int(e["sequence"]) for e in whole] == list(range(1, len(whole) + 1))
        assert _text(whole) == REPLY
        assert whole[-1]["done"]["finishReason"] == "FINISH_REASON_STOP"

        # Cancel over REST; someone else's turn is 404.
        async with http.post(f"{edge}/v1/{turn}:cancel", json={},
                             headers=headers) as response:
            assert response.status == 200, await response.text()
        async with http.post(f"{edge}/v1/{turn}:resume", json={},
                             headers={"authorization": "Bearer nonsense"}) as response:
            assert response.status == 401
        async with http.post(f"{edge}/v1/{turn}:resume", json={"afterSequence": "-1"},
                             headers=headers) as response:
            assert response.status == 400, await response.text()
