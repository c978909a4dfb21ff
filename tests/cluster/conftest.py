"""The Redis-backed suite against a real local Redis Cluster (3 masters).

`redis_server` is overridden here by a LocalRedisCluster: it has the `url` the shared
fixtures read (`redis+cluster://...`), so the auth, chat and rate limit servers below
run on redis-py's cluster client. Every session-scoped fixture that depends on Redis is
re-declared here (imported): pytest caches a session fixture once per declaration, so
without them a cluster test could get the single-node server another package started.
The test modules import the existing test functions and run them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.redis_cluster import LocalRedisCluster
from tests.chat.conftest import (  # noqa: F401 — re-declared for this package
    bob,
    chat_env,
    chat_server,
    chat_stub,
    fresh_script,
    model_server,
)
from tests.conftest import (  # noqa: F401 — re-declared for this package
    auth_address,
    auth_channel,
    auth_server,
    auth_stub,
    quota_stub,
)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server(redis_cluster: LocalRedisCluster) -> LocalRedisCluster:
    """What the shared fixtures take as `redis_server`: only its `url` is read."""
    return redis_cluster


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-data")
