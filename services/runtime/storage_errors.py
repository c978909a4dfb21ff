"""Storage (Redis) that cannot answer, as a client should see it and as the log should say it.

A request that failed because Redis is down, restarting, still loading its data set or
failing over is not a bug of ours nor the caller's: it answers UNAVAILABLE with RetryInfo
(retry in STORAGE_RETRY_SECONDS) and ErrorInfo reason STORAGE_UNAVAILABLE. The log gets
one WARNING when the outage is first seen and then at most one per
STORAGE_WARNING_INTERVAL_SECONDS (counting the failures in between), never a traceback per
request: an outage under load must not flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import exceptions as redis_errors

from services.runtime.errors import Unavailable

STORAGE_RETRY_SECONDS = 1.0
STORAGE_WARNING_INTERVAL_SECONDS = 60.0
STORAGE_UNAVAILABLE_REASON = "STORAGE_UNAVAILABLE"

# ConnectionError covers refused and dropped connections, BusyLoadingError (a restarting
# server loading its data set), MaxConnectionsError and AuthenticationError; the rest are
# a server that is up but cannot serve writes or the cluster for now.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)


def storage_unavailable(error: BaseException) -> Unavailable | None:
    """The UNAVAILABLE to answer when `error` says storage cannot answer now; else None."""
    if not isinstance(error, _UNAVAILABLE):
        return None
    return Unavailable("storage is temporarily unavailable; retry shortly",
                       reason=STORAGE_UNAVAILABLE_REASON,
                       retry_after_seconds=STORAGE_RETRY_SECONDS,
                       metadata={"storage": "redis"})


class OutageWarner:
    """Logs a WARNING for the first failure, then at most one per `interval` seconds."""

    def __init__(self, logger: logging.Logger,
                 interval: float = STORAGE_WARNING_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def failed(self, method: str, error: BaseException) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        since = (f" ({self._suppressed} more failed calls since the last warning)"
                 if self._suppressed else "")
        self._last = now
        self._suppressed = 0
        self._log.warning("storage unavailable, answering UNAVAILABLE: %s: %s (in %s)%s",
                          type(error).__name__, error, method, since)
