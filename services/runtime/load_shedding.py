"""Load shedding: a per-process limit on concurrent server-streaming calls.

A process past its limit refuses a new stream at once, before authenticating or doing
any other work, with UNAVAILABLE, RetryInfo and ErrorInfo reason OVERLOADED — rather than
queueing it behind the streams it already serves (each of which then slows down too).
UNAVAILABLE, not RESOURCE_EXHAUSTED: the call failed for a reason local to this process
and is safe to retry at once on another replica (gRPC clients and Envoy retry UNAVAILABLE;
Envoy's outlier detection sees it as a 503). RESOURCE_EXHAUSTED is the caller's own quota
in this mesh (auth's monthly tokens, the edge's rate limits): not to be retried blindly,
and shown at the edge as 429, which would blame the caller for the server's load.
"""

from __future__ import annotations

import threading

from services.runtime.errors import Unavailable

OVERLOADED = "OVERLOADED"
RETRY_AFTER_SECONDS = 1.0


class ConcurrencyLimiter:
    """At most `limit` holders at a time; `try_acquire` never waits.

    Exact under concurrency: the check and the count change happen under one lock (grpc.aio
    serves every call on one event loop, but the lock keeps it exact from any thread).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False (and nothing taken) when all are in use."""
        with self._lock:
            if self._in_use >= self.limit:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        """Give back a slot `try_acquire` took."""
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("released a slot that was never acquired")
            self._in_use -= 1


def overloaded(method: str, limit: int) -> Unavailable:
    """The error a call refused by the limiter ends with."""
    return Unavailable(
        f"this server is at its limit of {limit} concurrent streams; retry shortly",
        retry_after_seconds=RETRY_AFTER_SECONDS, reason=OVERLOADED,
        metadata={"method": method, "limit": str(limit)})
