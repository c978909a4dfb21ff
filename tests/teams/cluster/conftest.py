"""Team budgets on a real local Redis Cluster (3 masters): the cluster fixtures of
tests/cluster, with this package's own auth server on the cluster client (pytest
caches a session fixture once per declaration, so each one is re-declared here)."""

from __future__ import annotations

from tests.cluster.conftest import (  # noqa: F401 — re-declared for this package
    data_dir,
    redis_cluster,
    redis_server,
)
from tests.conftest import (  # noqa: F401 — re-declared for this package
    auth_address,
    auth_channel,
    auth_server,
    auth_stub,
    quota_stub,
)
from tests.teams.conftest import team_stub  # noqa: F401 — re-declared for this package
