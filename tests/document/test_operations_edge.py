"""ImportDocument and google.longrunning.Operations over REST through the real Envoy edge
(the product's spec, the transcoder loading the generated descriptor set): create →
get the operation until done → the document; list; cancel; another user's → 404."""

from __future__ import annotations

import asyncio
import base64
import json
import time
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
from tests.conftest import mesh_env
from tests.document.helpers import PARAGRAPHS
from tests.helpers import LoggedIn, register_and_login

POLL_SECONDS = 0.2  # well inside the edge's per-user rate limits
METADATA_TYPE = "type.googleapis.com/llmmesh.document.v1.ImportDocumentMetadata"
DOCUMENT_TYPE = "type.googleapis.com/llmmesh.document.v1.Document"


@pytest.fixture(scope="module")
async def ratelimit(redis_server: LocalRedis, data_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MeshServer]:
    rules = tmp_path_factory.mktemp("operations-ratelimit") / "ratelimit.yaml"
    rules.write_text(yaml.safe_dump(ratelimit_rules(LLMMESH_SPEC), sort_keys=False))
    env = mesh_env(redis_server, data_dir, LLMMESH_RATELIMIT_PORT="0",
                   LLMMESH_RATELIMIT_METRICS_PORT="0", LLMMESH_RATELIMIT_CONFIG=str(rules),
                   LLMMESH_RATELIMIT_KEY_PREFIX=f"operations-{uuid.uuid4().hex[:8]}:")
    server = create_ratelimit_server(RateLimitServiceConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
def edge(auth_address: str, document_server: MeshServer, ratelimit: MeshServer,
         tmp_path: Path) -> Iterator[str]:
    """Envoy with the product's spec in front of the session's auth and document servers."""
    nobody = ("127.0.0.1", free_port())
    assert document_server.port is not None and ratelimit.port is not None
    target = deployment.local(
        LLMMESH_SPEC, str(tmp_path), listener_port=0, admin_port=0,
        upstreams={**{u.name: nobody for u in LLMMESH_SPEC.upstreams},
                   "auth": ("127.0.0.1", int(auth_address.rpartition(":")[2])),
                   "document": ("127.0.0.1", document_server.port)},
        ratelimit=("127.0.0.1", ratelimit.port))
    envoy: EnvoyProcess = start_local_edge(LLMMESH_SPEC, target,
                                           log_path=tmp_path / "envoy.log", concurrency=1)
    try:
        yield f"http://127.0.0.1:{envoy.listener_port('edge')}"
    finally:
        envoy.stop()


async def _json(response: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def test_import_and_poll_the_operation_over_rest(edge: str, alice: LoggedIn,
                                                       auth_stub) -> None:  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {alice.tokens.access_token}"}
    text = "\n\n".join(f"rest {i}. " + " ".join(PARAGRAPHS) for i in range(12))
    body = {"source": {"filename": "rest.txt", "collection": "web"},
            "content": base64.b64encode(text.encode()).decode()}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(f"{edge}/v1/documents:import", json=body,
                             headers=headers) as response:
            operation = await _json(response)
        name = operation["name"]
        assert name.startswith("operations/") and not operation.get("done")
        assert operation["metadata"]["@type"] == METADATA_TYPE
        assert operation["metadata"]["filename"] == "rest.txt"

        deadline = time.monotonic() + 120
        while not operation.get("done"):
            assert time.monotonic() < deadline, operation
            await asyncio.sleep(POLL_SECONDS)
            async with http.get(f"{edge}/v1/{name}", headers=headers) as response:
                operation = await _json(response)
        document = operation["response"]
        assert document["@type"] == DOCUMENT_TYPE and document["collection"] == "web"
        assert document["chunkCount"] > 1
        assert operation["metadata"]["stage"] == "INGEST_STAGE_DONE"
        async with http.get(f"{edge}/v1/{document['name']}", headers=headers) as response:
            assert (await _json(response))["chunkCount"] == document["chunkCount"]

        # The progress stream can follow the operation over REST (SSE) too.
        async with http.post(f"{edge}/v1/documents:ingest", json={"operation": name},
                             headers=headers) as response:
            assert response.status == 200, await response.text()
            events = [json.loads(line.decode().removeprefix("data: "))
                      async for line in response.content if line.startswith(b"data: ")]
        assert events[-1]["stage"] == "INGEST_STAGE_DONE"
        assert events[-1]["document"]["name"] == document["name"]

        async with http.get(f"{edge}/v1/operations", headers=headers) as response:
            listed = await _json(response)
        assert [o["name"] for o in listed["operations"]] == [name]
        # Cancelling a done operation changes nothing.
        async with http.post(f"{edge}/v1/{name}:cancel", json={}, headers=headers) as response:
            await _json(response)

        bob = await register_and_login(auth_stub)
        other = {"authorization": f"Bearer {bob.tokens.access_token}"}
        async with http.get(f"{edge}/v1/{name}", headers=other) as response:
            assert response.status == 404, await response.text()
        async with http.post(f"{edge}/v1/{name}:cancel", json={}, headers=other) as response:
            assert response.status == 404, await response.text()

        async with http.delete(f"{edge}/v1/{name}", headers=headers) as response:
            await _json(response)
        async with http.get(f"{edge}/v1/{name}", headers=headers) as response:
            assert response.status == 404, await response.text()
