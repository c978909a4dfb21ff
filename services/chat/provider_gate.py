"""Keeps a model's HTTP request behind the turn's quota hold without waiting for the
hold to start preparing it.

A turn starts its model call while the hold is still being granted: LangChain and the
openai SDK build the request (about a millisecond of work) meanwhile, and the request
leaves only once the hold is granted. A refused hold fails the gate and the request is
never sent, so a user over quota still never causes a provider call (hosted models
bill for the prompt). The gate is a context variable, so the task that runs the model
call carries the hold of its own turn; the HTTP transport of every OpenAI-compatible
model waits on it (`GatedTransport`). Models without HTTP wait before they start
(`wait_for_gate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpx2

_gate: ContextVar[asyncio.Future[Any] | None] = ContextVar("llmmesh_provider_gate",
                                                           default=None)
# openai's defaults (DefaultAsyncHttpxClient), which a custom transport would drop.
CONNECTION_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100,
                                  keepalive_expiry=5.0)


@contextmanager
def gate(hold: asyncio.Future[Any]) -> Iterator[None]:
    """Tasks created in this block send their model requests only once `hold` is done,
    and never if it fails."""
    token = _gate.set(hold)
    try:
        yield
    finally:
        _gate.reset(token)


async def wait_for_gate() -> None:
    """Wait until this task's hold is granted; raise its error when refused."""
    hold = _gate.get()
    if hold is not None:
        # Shielded: cancelling the model call must not cancel the reservation itself.
        await asyncio.shield(hold)


class GatedTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport whose requests wait for their task's hold."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport(limits=CONNECTION_LIMITS)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await wait_for_gate()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
