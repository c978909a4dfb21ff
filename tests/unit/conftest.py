"""Unit-test fixtures: a Redis client on the session's real local server, for the
classes whose only storage is Redis Lua scripts (no in-memory seam)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import pytest
from redis.asyncio import Redis


class _Server(Protocol):
    url: str


@pytest.fixture
async def redis(redis_server: _Server) -> AsyncIterator[Redis]:
    """A client like the services' own (str replies). Tests use fresh user ids, so no
    flush is needed and the session's other users are left alone."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def new_user() -> str:
    """A user id in the mesh's format (32 hex digits)."""
    return uuid.uuid4().hex
