"""The Redis client every service uses, and typed views of its replies.

`LLMMESH_REDIS_URL` names one server (`redis://`, `rediss://`, `unix://`: redis-py's
URL forms) or a Redis Cluster: `redis+cluster://[user:password@]host:port,host:port,...`
(`rediss+cluster://` for TLS) lists one or more nodes to discover the cluster from,
and the services then use redis-py's cluster client. A cluster has database 0 only.
Every script and transaction of the services touches keys of one hash tag (`{...}`),
so each runs on one node of the cluster.

redis-py types replies as `bytes | str` whatever the client decodes; this client
decodes (decode_responses=True), so `text`, `text_hash` and `scored_members` narrow a
reply to the strings it holds, and refuse one that was not decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.maint_notifications import MaintNotificationsConfig
from redis.typing import EncodableT

# What the stores take: one server's client or a cluster's.
RedisClient = Redis | RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def redis_client(url: str, *, socket_timeout: float | None = None,
                 socket_connect_timeout: float = 5,
                 health_check_interval: float = 30) -> RedisClient:
    """A pooled asyncio client that decodes replies to str: a cluster client for a
    `redis+cluster://` URL, else a client of the one server the URL names."""
    if is_cluster_url(url):
        return _cluster_client(url, socket_timeout=socket_timeout,
                               socket_connect_timeout=socket_connect_timeout,
                               health_check_interval=health_check_interval)
    return Redis.from_url(url, decode_responses=True,
                          health_check_interval=health_check_interval,
                          socket_timeout=socket_timeout,
                          socket_connect_timeout=socket_connect_timeout,
                        maint_notifications_config=MaintNotificationsConfig(enabled=False))


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """The (host, port) nodes, username, password and TLS flag of a cluster URL."""
    scheme, _, rest = url.partition("://")
    tls = CLUSTER_SCHEMES.get(scheme.lower())
    if tls is None:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or "
                         "rediss+cluster://")
    credentials, _, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    if path.split("?")[0] not in ("", "0") or "?" in hosts or "?" in path:
        raise ValueError("a Redis Cluster URL takes no database (a cluster has only 0) "
                         "and no query options")
    username: str | None = None
    password: str | None = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for host in hosts.split(","):
        # urlsplit parses host:port, [IPv6]:port included.
        parsed = urlsplit(f"//{host.strip()}")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ValueError(f"bad port in Redis Cluster node {host!r}") from None
        if not parsed.hostname:
            raise ValueError(f"a Redis Cluster URL needs host:port nodes, got {host!r}")
        nodes.append((parsed.hostname, port))
    return nodes, username, password, tls


class _ClusterClient(RedisCluster):
    """redis-py's cluster client, discovering the cluster before its first command.

    redis-py 8.1 discovers the cluster lazily, on the first command, and then marks the
    connections it opened for a lazy reconnect; commands that start on them right after
    can have their connection closed under them once sent, and the client retries them:
    a script that ran is run twice (measured here: counters counted twice, a
    registration answered "taken" to its own winner). So the first command discovers
    the cluster alone, and drops every connection discovery opened before any command
    goes out.
    """

    _discovered = False
    _discovering: asyncio.Lock | None = None

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        if not self._discovered:
            await self._discover()
        return await super().execute_command(*args, **kwargs)

    async def _discover(self) -> None:
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        async with self._discovering:
            if self._discovered:
                return
            await self.initialize()
            await asyncio.gather(*(node.disconnect() for node in self.get_nodes()),
                                 return_exceptions=True)
            self._discovered = True

    async def aclose(self) -> None:
        self._discovered = False
        await super().aclose()


def _cluster_client(url: str, *, socket_timeout: float | None,
                    socket_connect_timeout: float,
                    health_check_interval: float) -> RedisCluster:
    nodes, username, password, tls = cluster_nodes(url)
    return _ClusterClient(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                        username=username, password=password, ssl=tls,
                        decode_responses=True, health_check_interval=health_check_interval,
                        socket_timeout=socket_timeout,
                        socket_connect_timeout=socket_connect_timeout,
                        maint_notifications_config=MaintNotificationsConfig(enabled=False))


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
