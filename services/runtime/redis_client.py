"""The Redis client every service uses, and typed views of its replies.

redis-py types replies as `bytes | str` whatever the client decodes; this client
decodes (decode_responses=True), so `text`, `text_hash` and `scored_members` narrow a
reply to the strings it holds, and refuse one that was not decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from redis.asyncio import Redis


def redis_client(url: str) -> Redis:
    """A pooled asyncio client that decodes replies to str."""
    return Redis.from_url(url, decode_responses=True, health_check_interval=30,
                          socket_connect_timeout=5)


def text(reply: bytes | str) -> str:
    """A string reply of a decoding client."""
    if isinstance(reply, bytes):
        raise TypeError("a Redis reply was not decoded: use a client made with "
                        "decode_responses=True")
    return reply


def text_hash(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """An HGETALL reply of a decoding client."""
    return {text(key): text(value) for key, value in reply.items()}


def scored_members(reply: Iterable[object]) -> list[tuple[str, float]]:
    """A sorted-set range read `withscores=True` (pairs: tuples on RESP2, lists on RESP3)."""
    pairs: list[tuple[str, float]] = []
    for item in reply:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError("expected (member, score) pairs: read the range withscores=True")
        member, score = item
        pairs.append((text(member), float(score)))
    return pairs
