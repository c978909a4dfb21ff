"""Ingestion operations in Redis (AIP-151): each ImportDocument call's state, its upload
and the per-user listing.

Keys (the user's hash tag, as the document records, so every script below and the
document commit that ends an operation run on one Redis Cluster node):

- `document:{user}:op:{id}` hash: what is ingested, progress, attempts, and the end
  (`done`, `result_document` + `deduplicated`, or `error`: a serialized
  google.rpc.Status in base64). Kept `retention` seconds after it ends. No credential
  is stored: the worker calls the embedding service with the service credential, on
  the owner's behalf (services/runtime/authn.py), however long the job waits or runs.
- `document:{user}:upload:{id}`: the uploaded bytes (base64), until the operation ends
  or `upload_ttl` passes.
- `document:{user}:operations` sorted set: the user's operation ids by creation time.

An operation ends once: every ending (commit, failure, cancellation) is a script that
does nothing when `done` is already set.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from google.rpc import status_pb2

from services.document.records import DocumentRecord, DocumentRecords, user_key_base
from services.runtime.redis_client import RedisClient, text, text_hash

OPERATION_STAGE_RECEIVED = 1  # ingestion.Stage values, as stored
OPERATION_STAGE_DONE = 6
OPERATION_STAGE_FAILED = 7

# KEYS: operation, upload, listing
# ARGV: id, user, document id, filename, collection, claimed type, size, now,
#       upload ttl, retention, content (base64)
_CREATE = """
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'user', ARGV[2], 'document_id', ARGV[3],
           'filename', ARGV[4], 'collection', ARGV[5], 'claimed_type', ARGV[6],
           'size', ARGV[7], 'create_time', ARGV[8], 'update_time', ARGV[8],
           'stage', '1', 'embedded', '0', 'total', '0', 'attempts', '0',
           'cancel_requested', '0', 'done', '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]) + tonumber(ARGV[10]))
redis.call('SET', KEYS[2], ARGV[11], 'EX', ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf',
           tostring(tonumber(ARGV[8]) - tonumber(ARGV[9]) - tonumber(ARGV[10])))
return 1
"""

# KEYS: operation. ARGV: stage, embedded, total, now, the caller's document id.
# Returns 'open' | 'done' | 'committed' (done with that document) | 'gone'.
_PROGRESS = """
local state = redis.call('HMGET', KEYS[1], 'done', 'result_document')
if not state[1] then return 'gone' end
if state[1] == '1' then
  if state[2] == ARGV[5] then return 'committed' end
  return 'done'
end
redis.call('HSET', KEYS[1], 'stage', ARGV[1], 'embedded', ARGV[2], 'total', ARGV[3],
           'update_time', ARGV[4])
return 'open'
"""

# KEYS: operation. Counts a worker's start; returns the attempts so far, 0 when the
# operation is gone or over.
_START = """
local done = redis.call('HGET', KEYS[1], 'done')
if done ~= '0' then return 0 end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# KEYS: operation, upload. ARGV: now, retention, then 'error' + status or
# 'result_document' + id + 'deduplicated' + flag, and for cancellation 'cancel_requested'
# + '1'. Returns 1 when this call ended the operation, 0 when it was over or gone.
_END = """
local done = redis.call('HGET', KEYS[1], 'done')
if done ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'done', '1', 'update_time', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: operation, upload, listing. ARGV: id. Deletes an operation that is over.
# Returns 1 (deleted), 0 (no such operation) or -1 (still running).
_DELETE = """
local done = redis.call('HGET', KEYS[1], 'done')
if not done then return 0 end
if done ~= '1' then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def new_operation_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class OperationState:
    """An operation as stored."""

    id: str
    user_id: str
    document_id: str  # the id its document gets when ingested (not deduplicated)
    filename: str
    collection: str
    claimed_type: str
    size: int
    create_time: float
    update_time: float
    stage: int
    embedded: int
    total: int
    attempts: int
    cancel_requested: bool
    done: bool
    result_document: str  # when done: the document it produced or matched
    deduplicated: bool
    error: status_pb2.Status | None  # when done without a document


class OperationStore:
    """Operations per user (a client with `decode_responses=True`)."""

    def __init__(self, redis: RedisClient, records: DocumentRecords, *,
                 upload_ttl_seconds: int, retention_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._records = records
        self._upload_ttl = upload_ttl_seconds
        self._retention = retention_seconds
        self._clock = clock
        self._create = redis.register_script(_CREATE)
        self._progress = redis.register_script(_PROGRESS)
        self._start = redis.register_script(_START)
        self._end = redis.register_script(_END)
        self._delete = redis.register_script(_DELETE)

    async def create(self, user_id: str, filename: str, collection: str, claimed_type: str,
                     content: bytes, operation_id: str | None = None) -> OperationState:
        """Store the upload and a new open operation for it, durably, in one step.
        `operation_id`: the id to give it (a new one when None)."""
        operation_id = operation_id or new_operation_id()
        now = self._clock()
        keys = _Keys(user_id, operation_id)
        await self._create(
            keys=[keys.operation, keys.upload, keys.listing],
            args=[operation_id, user_id, uuid.uuid4().hex, filename, collection,
                  claimed_type, len(content), repr(now), self._upload_ttl, self._retention,
                  base64.b64encode(content)])
        found = await self.get(user_id, operation_id)
        assert found is not None
        return found

    async def get(self, user_id: str, operation_id: str) -> OperationState | None:
        reply = text_hash(await self._redis.hgetall(_Keys(user_id, operation_id).operation))
        return _state(reply) if reply else None

    async def page(self, user_id: str, offset: int, size: int) -> tuple[list[OperationState],
                                                                        bool]:
        """The user's operations newest first from `offset`, and whether more follow."""
        listing = _Keys(user_id, "").listing
        ids = [str(i) for i in await self._redis.zrevrange(listing, offset, offset + size)]
        found = []
        for operation_id in ids[:size]:
            state = await self.get(user_id, operation_id)
            if state is not None:  # expired since: the listing forgets it on next create
                found.append(state)
        return found, len(ids) > size

    async def upload(self, user_id: str, operation_id: str) -> bytes | None:
        """The operation's uploaded bytes; None once the operation ended or they expired."""
        found = await self._redis.get(_Keys(user_id, operation_id).upload)
        return None if found is None else base64.b64decode(text(found))

    async def start(self, user_id: str, operation_id: str) -> int:
        """Count a worker's attempt; 0 when the operation is over or gone."""
        return int(await self._start(keys=[_Keys(user_id, operation_id).operation]))

    async def progress(self, user_id: str, operation_id: str, stage: int, embedded: int,
                       total: int, document_id: str = "") -> str:
        """Record progress; answers 'open', 'done', 'committed' (done with
        `document_id`) or 'gone'."""
        return text(await self._progress(keys=[_Keys(user_id, operation_id).operation],
                                         args=[stage, embedded, total, repr(self._clock()),
                                               document_id]))

    async def commit(self, user_id: str, operation_id: str, record: DocumentRecord) -> str:
        """Commit the operation's document and end the operation with it (see
        records._COMMIT_OPERATION for the answers)."""
        keys = _Keys(user_id, operation_id)
        return await self._records.commit_operation(
            user_id, record, operation_key=keys.operation, upload_key=keys.upload,
            now=self._clock(), retention_seconds=self._retention)

    async def succeed(self, user_id: str, operation_id: str, document_id: str, *,
                      deduplicated: bool) -> bool:
        """End with an existing document (an identical upload committed earlier)."""
        return await self._finish(user_id, operation_id,
                                  "stage", str(OPERATION_STAGE_DONE),
                                  "result_document", document_id,
                                  "deduplicated", "1" if deduplicated else "0")

    async def fail(self, user_id: str, operation_id: str, error: status_pb2.Status, *,
                   cancelled: bool = False) -> bool:
        """End with `error`; True when this call ended it."""
        extra = ("cancel_requested", "1") if cancelled else ()
        return await self._finish(user_id, operation_id,
                                  "stage", str(OPERATION_STAGE_FAILED),
                                  "error", _encode_status(error), *extra)

    async def delete(self, user_id: str, operation_id: str) -> int:
        """1 deleted, 0 no such operation, -1 still running."""
        keys = _Keys(user_id, operation_id)
        return int(await self._delete(keys=[keys.operation, keys.upload, keys.listing],
                                      args=[operation_id]))

    async def _finish(self, user_id: str, operation_id: str, *fields: str) -> bool:
        keys = _Keys(user_id, operation_id)
        ended = await self._end(keys=[keys.operation, keys.upload],
                                args=[repr(self._clock()), self._retention, *fields])
        return bool(ended)


class _Keys:
    def __init__(self, user_id: str, operation_id: str) -> None:
        base = user_key_base(user_id)
        self.operation = f"{base}:op:{operation_id}"
        self.upload = f"{base}:upload:{operation_id}"
        self.listing = f"{base}:operations"


def _encode_status(status: status_pb2.Status) -> str:
    return base64.b64encode(status.SerializeToString()).decode()


def _state(fields: dict[str, str]) -> OperationState:
    error = None
    if fields.get("error"):
        error = status_pb2.Status()
        error.ParseFromString(base64.b64decode(fields["error"]))
    return OperationState(
        id=fields["id"], user_id=fields["user"], document_id=fields["document_id"],
        filename=fields["filename"], collection=fields["collection"],
        claimed_type=fields["claimed_type"], size=int(fields["size"]),
        create_time=float(fields["create_time"]), update_time=float(fields["update_time"]),
        stage=int(fields["stage"]), embedded=int(fields["embedded"]),
        total=int(fields["total"]), attempts=int(fields["attempts"]),
        cancel_requested=fields["cancel_requested"] == "1", done=fields["done"] == "1",
        result_document=fields.get("result_document", ""),
        deduplicated=fields.get("deduplicated") == "1", error=error)
