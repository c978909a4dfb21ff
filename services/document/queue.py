"""The durable ingestion queue: a Redis Stream read by a consumer group.

One stream (`document:{ingest-queue}:<store>`, its own hash tag: one Redis Cluster
node) carries one entry per operation to run (`user`, `operation`). `<store>` is a
digest of the chunk store's location (the Chroma server's address, or the embedded
store's directory): a job is only ever run by a worker that writes into the store its
document is read from, even when several deployments share one Redis. Every document worker
process is a consumer of the group `document-workers`. An entry stays pending, owned
by the consumer that read it, until that consumer acknowledges (and deletes) it. A
consumer that dies leaves its entries pending; once an entry has been idle for
`claim_idle` seconds any consumer takes it over with XAUTOCLAIM (at-least-once). A live
consumer keeps its entries fresh by claiming them again (`touch`) well within that time.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from services.runtime.redis_client import RedisClient, text

GROUP = "document-workers"


def stream_key(store_location: str) -> str:
    """The queue of the workers writing into the chunk store at `store_location`."""
    digest = hashlib.sha256(store_location.encode()).hexdigest()[:16]
    return f"document:{{ingest-queue}}:{digest}"


@dataclass(frozen=True)
class Job:
    """One entry of the stream."""

    entry_id: str
    user_id: str
    operation_id: str


def consumer_name() -> str:
    """This process's consumer name: host, pid and a random suffix (a restarted process
    with the same pid is still a new consumer)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class IngestQueue:
    """Adds, reads, claims and acknowledges ingestion jobs."""

    def __init__(self, redis: RedisClient, stream: str, *, claim_idle_seconds: float,
                 consumer: str | None = None) -> None:
        self._redis = redis
        self.stream = stream
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self.consumer = consumer or consumer_name()

    async def ensure_group(self) -> None:
        """Create the stream and the group if they are missing."""
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def add(self, user_id: str, operation_id: str) -> str:
        entry = await self._redis.xadd(self.stream, {"user": user_id,
                                                    "operation": operation_id})
        return text(entry)

    async def read(self, count: int, block_seconds: float) -> list[Job]:
        """Up to `count` new entries, waiting up to `block_seconds` for one."""
        reply = await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"},
                                             count=count, block=int(block_seconds * 1000))
        jobs: list[Job] = []
        for _stream, entries in _streams(reply):
            jobs += _jobs(entries)
        return jobs

    async def claim_stale(self, count: int) -> list[Job]:
        """Up to `count` entries pending longer than the claim timeout (a lost worker's)."""
        reply = await self._redis.xautoclaim(self.stream, GROUP, self.consumer,
                                             min_idle_time=self._claim_idle_ms,
                                             start_id="0-0", count=count)
        return _jobs(reply[1]) if len(reply) > 1 else []

    async def touch(self, job: Job) -> bool:
        """Reset the idle time of an entry this consumer works on; False when it is gone
        (acknowledged by another consumer)."""
        claimed = await self._redis.xclaim(self.stream, GROUP, self.consumer,
                                           min_idle_time=0, message_ids=[job.entry_id],
                                           justid=True)
        return bool(claimed)

    async def ack(self, job: Job) -> None:
        """Done with an entry: acknowledge and delete it."""
        await self._redis.xack(self.stream, GROUP, job.entry_id)
        await self._redis.xdel(self.stream, job.entry_id)

    async def pending(self) -> list[tuple[str, str]]:
        """(entry id, consumer) of every pending entry (for tests and operators)."""
        reply = await self._redis.xpending_range(self.stream, GROUP, min="-", max="+",
                                                 count=1000)
        return [(str(item["message_id"]), str(item["consumer"])) for item in reply]


def _streams(reply: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply as (stream, entries) pairs (a list on RESP2, a dict on RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(item[0], item[1]) for item in reply]


def _jobs(entries: Any) -> list[Job]:
    jobs = []
    for entry_id, fields in entries or []:
        if not fields:  # an entry deleted while pending
            continue
        jobs.append(Job(entry_id=text(entry_id), user_id=text(fields["user"]),
                        operation_id=text(fields["operation"])))
    return jobs
