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

An operation is written (under its user's hash tag) before its job is queued, so a
process that dies between the two would leave it open and never run. Its *intent* is
therefore noted first, in a sorted set beside the stream (`<stream>:intents`, the same
hash tag), and queueing removes it in the same script. Workers look for intents older
than the claim timeout (`stranded`) and queue their operations (`add` with
`only_if_intended`: whoever removes the intent queues it, once).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ResponseError

from services.runtime.redis_client import RedisClient, text

GROUP = "document-workers"

# KEYS: stream, intents. ARGV: intent, user, operation, only if intended ('1' or '0').
# Queues the job and forgets its intent; with '1', only while the intent is there.
_ENQUEUE = """
local intended = redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] == '1' and intended == 0 then return false end
return redis.call('XADD', KEYS[1], '*', 'user', ARGV[2], 'operation', ARGV[3])
"""


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
        self._enqueue = redis.register_script(_ENQUEUE)

    async def ensure_group(self) -> None:
        """Create the stream and the group if they are missing."""
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    @property
    def intents(self) -> str:
        """The sorted set of operations about to be queued, by when that was noted."""
        return f"{self.stream}:intents"

    async def intend(self, user_id: str, operation_id: str, now: float) -> None:
        """Note that this operation is about to be written and queued."""
        await self._redis.zadd(self.intents, {_intent(user_id, operation_id): now})

    async def add(self, user_id: str, operation_id: str, *,
                  only_if_intended: bool = False) -> str | None:
        """Queue a job (and forget its intent); the entry id, or None when
        `only_if_intended` and someone else queued it already."""
        entry = await self._enqueue(
            keys=[self.stream, self.intents],
            args=[_intent(user_id, operation_id), user_id, operation_id,
                  "1" if only_if_intended else "0"])
        return text(entry) if entry else None

    async def stranded(self, noted_before: float, count: int = 100
                       ) -> list[tuple[str, str, float]]:
        """(user, operation, noted at) of intents noted before `noted_before`."""
        found = await self._redis.zrangebyscore(self.intents, "-inf", noted_before,
                                                start=0, num=count, withscores=True)
        stranded = []
        for member, score in cast("list[tuple[Any, Any]]", found):
            user_id, _, operation_id = text(member).partition("/")
            stranded.append((user_id, operation_id, float(score)))
        return stranded

    async def forget(self, user_id: str, operation_id: str) -> None:
        """Drop an intent whose operation needs no queueing (ended, or never written)."""
        await self._redis.zrem(self.intents, _intent(user_id, operation_id))

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


def _intent(user_id: str, operation_id: str) -> str:
    return f"{user_id}/{operation_id}"


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
