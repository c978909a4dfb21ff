"""The Redis client every service uses."""

from __future__ import annotations

from redis.asyncio import Redis


def redis_client(url: str) -> Redis:
    """A pooled asyncio client that decodes replies to str."""
    return Redis.from_url(url, decode_responses=True, health_check_interval=30,
                          socket_connect_timeout=5)
