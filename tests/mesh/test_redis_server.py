"""The local Redis runner picks its own port and never mistakes another server for its
own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mesh import redis_server
from mesh.redis_server import LocalRedis


@pytest.fixture
def first(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "first", persistent=False)
    server.start()
    yield server
    server.stop()


def test_a_taken_port_is_skipped_not_shared(first: LocalRedis, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    picks = iter([first.port, redis_server.free_port()])
    monkeypatch.setattr(redis_server, "free_port", lambda: next(picks))
    second = LocalRedis(tmp_path / "second", persistent=False)
    second.start()
    try:
        assert second.port != first.port
        client = redis.Redis.from_url(second.url)
        try:
            client.set("whose", "second")
        finally:
            client.close()
        other = redis.Redis.from_url(first.url)
        try:
            assert other.get("whose") is None, "the second server is not the first one"
        finally:
            other.close()
    finally:
        second.stop()


def test_a_fixed_port_that_is_taken_fails_loudly(first: LocalRedis, tmp_path: Path) -> None:
    clash = LocalRedis(tmp_path / "clash", first.port, persistent=False)
    with pytest.raises(RuntimeError, match=r"taken|exited"):
        clash.start()
