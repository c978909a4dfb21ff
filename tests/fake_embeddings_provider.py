"""An OpenAI-compatible /v1/embeddings HTTP server for tests: the one stand-in we allow,
for a hosted API outside our machines. The real langchain-openai client talks to it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

DIMENSION = 8


def fake_vector(text: str, dimension: int = DIMENSION) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:dimension]]


class FakeEmbeddingsProvider:
    """Deterministic vectors, with switchable failures, delays and a failure countdown."""

    def __init__(self) -> None:
        self.fail_with: int | None = None
        self.fail_after: int | None = None  # fail every request after this many
        self.delay_seconds = 0.0
        self.wrong_dimension = False
        self.requests: list[dict[str, object]] = []

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization")})
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        failing = self.fail_with or (
            503 if self.fail_after is not None and len(self.requests) > self.fail_after else None)
        if failing:
            return web.json_response({"error": {"message": "nope", "type": "x"}},
                                     status=failing)
        size = DIMENSION + 1 if self.wrong_dimension else DIMENSION
        data = [{"object": "embedding", "index": i,
                 "embedding": fake_vector(t, size)} for i, t in enumerate(body["input"])]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": 3, "total_tokens": 3}})


@asynccontextmanager
async def running_provider() -> AsyncIterator[tuple[FakeEmbeddingsProvider, str]]:
    """The provider on 127.0.0.1 and its base URL (`http://127.0.0.1:PORT/v1`)."""
    fake = FakeEmbeddingsProvider()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
