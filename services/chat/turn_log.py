"""A streamed turn's events, kept in Redis for resumers (Redis Streams).

Keys, all with the turn's id as hash tag (one slot on Redis Cluster):

- `chat:turn:{<turn>}:events`: a stream, one entry per write (the events produced
  meanwhile, one XADD), entry id `0-<its last sequence>`, one field per event: its
  sequence -> the serialized StreamChatResponse, base64 (the client decodes replies as
  text). `XREAD` after `0-<n>` returns every entry holding an event after sequence n (the
  reader skips that entry's events up to n); an XADD whose id is not above the last one
  is refused, so an event is never logged twice.
- `chat:turn:{<turn>}:meta`: a hash: `user`, `conversation`, `state` (`running` or
  `ended`) and `last` (the final event's sequence, once ended).
- `chat:turn:{<turn>}:live`: exists while the process running the turn is alive (a
  lease it renews every heartbeat); a resumer that finds it gone before the final
  event knows the turn will never end.
- `chat:turn:{<turn>}:readers`: a sorted set of the resumers attached, scored by
  when their attachment lapses unless renewed.
- `chat:turn:{<turn>}:cancel`: set by CancelTurn; the running turn sees it at its
  next write or heartbeat.

Every key expires `ttl` seconds after the turn ended (or after its first write, renewed
by each heartbeat while it runs).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.runtime.redis_client import RedisClient, text_hash

RUNNING = "running"
ENDED = "ended"


def _key(turn_id: str, suffix: str) -> str:
    return f"chat:turn:{{{turn_id}}}:{suffix}"


@dataclass(frozen=True)
class TurnMeta:
    """What the log knows of a turn."""

    user_id: str
    conversation_id: str
    ended: bool
    last_sequence: int  # the final event's sequence once ended, else 0


@dataclass(frozen=True)
class Pulse:
    """What a running turn learns at a heartbeat."""

    cancel_requested: bool
    readers: int  # resumers attached now (on any process)


class TurnLog:
    """Writes and reads turns' event logs."""

    def __init__(self, redis: RedisClient, ttl_seconds: int, live_seconds: float) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._live_ms = max(int(live_seconds * 1000), 100)

    async def open(self, turn_id: str, user_id: str, conversation_id: str) -> None:
        """Record a new running turn (before its first event goes anywhere)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            meta = _key(turn_id, "meta")
            pipe.hset(meta, mapping={"user": user_id, "conversation": conversation_id,
                                     "state": RUNNING, "last": 0})
            pipe.expire(meta, self._ttl)
            pipe.set(_key(turn_id, "live"), 1, px=self._live_ms)
            await pipe.execute()

    async def append(self, turn_id: str, events: Sequence[tuple[int, bytes]], *,
                     final: bool) -> bool:
        """Add `events` (sequence, serialized), in order, renewing the turn's lease and
        expiry, in one round trip; `final`: the last is the turn's final event. Returns
        whether a cancel was requested meanwhile."""
        stream, meta = _key(turn_id, "events"), _key(turn_id, "meta")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, {str(sequence): base64.b64encode(payload).decode("ascii")
                               for sequence, payload in events},
                      id=f"0-{events[-1][0]}")
            if final:
                pipe.hset(meta, mapping={"state": ENDED, "last": events[-1][0]})
                pipe.delete(_key(turn_id, "live"))
                pipe.expire(meta, self._ttl)
            if final or events[0][0] == 1:
                pipe.expire(stream, self._ttl)
            pipe.exists(_key(turn_id, "cancel"))
            replies = await pipe.execute()
        return bool(replies[-1])

    async def last_logged(self, turn_id: str) -> int:
        """The sequence of the last event logged (0: none); after a failed append, what
        made it before the failure."""
        entries: Any = await self._redis.xrevrange(_key(turn_id, "events"), count=1)
        return _sequence(str(entries[0][0])) if entries else 0

    async def pulse(self, turn_id: str) -> Pulse:
        """Renew the running turn's lease; whether a cancel was requested and how many
        resumers are attached."""
        readers = _key(turn_id, "readers")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_key(turn_id, "live"), 1, px=self._live_ms)
            pipe.exists(_key(turn_id, "cancel"))
            pipe.zcount(readers, _now_ms(), "+inf")
            pipe.expire(_key(turn_id, "meta"), self._ttl)
            pipe.expire(_key(turn_id, "events"), self._ttl)
            replies = await pipe.execute()
        return Pulse(cancel_requested=bool(replies[1]), readers=int(replies[2]))

    async def meta(self, turn_id: str) -> TurnMeta | None:
        fields = text_hash(await self._redis.hgetall(_key(turn_id, "meta")))
        if not fields.get("user"):
            return None
        return TurnMeta(user_id=fields["user"], conversation_id=fields.get("conversation", ""),
                        ended=fields.get("state") == ENDED,
                        last_sequence=int(fields.get("last") or 0))

    async def alive(self, turn_id: str) -> bool:
        """Whether the process running the turn still renews its lease."""
        return bool(await self._redis.exists(_key(turn_id, "live")))

    async def read(self, turn_id: str, after: int, block_seconds: float
                   ) -> list[tuple[int, bytes]]:
        """The events after sequence `after`, in order, waiting up to `block_seconds` for
        some."""
        reply: Any = await self._redis.xread({_key(turn_id, "events"): f"0-{after}"},
                                             block=max(int(block_seconds * 1000), 1))
        found: list[tuple[int, bytes]] = []
        for _stream, entries in reply or ():
            for _entry_id, fields in entries:
                found.extend(sorted((int(sequence), base64.b64decode(payload))
                                    for sequence, payload in fields.items()
                                    if int(sequence) > after))
        return found

    async def attach(self, turn_id: str, reader_id: str, for_seconds: float) -> None:
        """Say a resumer reads the turn for the next `for_seconds` (renewed as it reads)."""
        readers = _key(turn_id, "readers")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(readers, {reader_id: _now_ms() + int(for_seconds * 1000)})
            pipe.zremrangebyscore(readers, "-inf", _now_ms())
            pipe.expire(readers, self._ttl)
            await pipe.execute()

    async def detach(self, turn_id: str, reader_id: str) -> None:
        await self._redis.zrem(_key(turn_id, "readers"), reader_id)

    async def request_cancel(self, turn_id: str) -> None:
        await self._redis.set(_key(turn_id, "cancel"), 1, ex=self._ttl)


def _sequence(entry_id: str) -> int:
    return int(entry_id.partition("-")[2])


def _now_ms() -> int:
    return int(time.time() * 1000)
