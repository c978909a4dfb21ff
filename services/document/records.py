"""Document records in Redis: the metadata of each committed document, the per-user
listing, per-collection counts and the content-hash index that detects re-uploads.

A document exists for readers only once `commit` has run; it writes the record and
every index in one Lua script, and refuses (returning the existing id) when the same
content is already committed in the same collection. Keys share the user's hash tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.runtime.redis_client import RedisClient, text, text_hash

# KEYS: record, listing, ids, dedupe, coll_docs, coll_chunks, collection listing
# ARGV: id, collection, filename, content_type, size, chunks, sha256, create_time
_COMMIT = """
local existing = redis.call('GET', KEYS[4])
if existing then return existing end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'collection', ARGV[2], 'filename', ARGV[3],
           'content_type', ARGV[4], 'size', ARGV[5], 'chunks', ARGV[6], 'sha256', ARGV[7],
           'create_time', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
redis.call('HINCRBY', KEYS[6], ARGV[2], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[1])
return ''
"""

# _COMMIT, and the operation that ingested the document ends with it, atomically: a
# document of an operation is committed at most once, and only while the operation is
# open (not cancelled, failed or completed by another worker).
# KEYS: record, listing, ids, dedupe, coll_docs, coll_chunks, collection listing,
#       operation, operation's upload
# ARGV: id, collection, filename, content_type, size, chunks, sha256, create_time,
#       now, operation retention seconds
# Returns '' (committed), 'dup:<id>' (identical content was there: the operation ends
# with that document), 'committed' (this document was already committed by this
# operation) or 'closed' (the operation ended without it: nothing written).
_COMMIT_OPERATION = """
local state = redis.call('HMGET', KEYS[8], 'done', 'result_document')
if not state[1] then return 'closed' end
if state[1] == '1' then
  if state[2] == ARGV[1] then return 'committed' end
  return 'closed'
end
local existing = redis.call('GET', KEYS[4])
local result = ARGV[1]
local dedup = '0'
if existing then
  result = existing
  dedup = '1'
else
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'collection', ARGV[2], 'filename', ARGV[3],
             'content_type', ARGV[4], 'size', ARGV[5], 'chunks', ARGV[6], 'sha256', ARGV[7],
             'create_time', ARGV[8])
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SET', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
  redis.call('HINCRBY', KEYS[6], ARGV[2], tonumber(ARGV[6]))
  redis.call('ZADD', KEYS[7], ARGV[8], ARGV[1])
end
redis.call('HSET', KEYS[8], 'done', '1', 'result_document', result, 'deduplicated', dedup,
           'stage', '6', 'embedded', ARGV[6], 'total', ARGV[6], 'update_time', ARGV[9])
redis.call('EXPIRE', KEYS[8], ARGV[10])
redis.call('DEL', KEYS[9])
if existing then return 'dup:' .. existing end
return ''
"""

# KEYS: record, listing, ids, coll_docs, coll_chunks
# ARGV: id, dedupe key prefix, collection listing prefix
_REMOVE = """
local fields = redis.call('HMGET', KEYS[1], 'collection', 'chunks', 'sha256')
if not fields[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', ARGV[2] .. fields[1] .. ':' .. fields[3])
redis.call('ZREM', ARGV[3] .. fields[1], ARGV[1])
if redis.call('HINCRBY', KEYS[4], fields[1], -1) <= 0 then
  redis.call('HDEL', KEYS[4], fields[1])
  redis.call('HDEL', KEYS[5], fields[1])
else
  redis.call('HINCRBY', KEYS[5], fields[1], -tonumber(fields[2]))
end
return 1
"""


@dataclass(frozen=True)
class DocumentRecord:
    id: str
    collection: str
    filename: str
    content_type: str
    size: int
    chunks: int
    sha256: str
    create_time: float


class DocumentRecords:
    """Committed documents per user (client with `decode_responses=True`)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._commit = redis.register_script(_COMMIT)
        self._remove = redis.register_script(_REMOVE)
        self._commit_operation = redis.register_script(_COMMIT_OPERATION)

    async def commit(self, user_id: str, record: DocumentRecord) -> str | None:
        """Make `record` visible; returns the id of an identical document if one exists."""
        keys = _Keys(user_id)
        existing = await self._commit(
            keys=[keys.record(record.id), keys.listing, keys.ids,
                  keys.dedupe(record.collection, record.sha256), keys.coll_docs,
                  keys.coll_chunks, keys.collection_listing(record.collection)],
            args=[record.id, record.collection, record.filename, record.content_type,
                  record.size, record.chunks, record.sha256, repr(record.create_time)])
        return existing or None

    async def commit_operation(self, user_id: str, record: DocumentRecord, *,
                               operation_key: str, upload_key: str, now: float,
                               retention_seconds: int) -> str:
        """`commit`, and the operation ends with the document, in one step (see
        _COMMIT_OPERATION for the answers)."""
        keys = _Keys(user_id)
        answer = await self._commit_operation(
            keys=[keys.record(record.id), keys.listing, keys.ids,
                  keys.dedupe(record.collection, record.sha256), keys.coll_docs,
                  keys.coll_chunks, keys.collection_listing(record.collection),
                  operation_key, upload_key],
            args=[record.id, record.collection, record.filename, record.content_type,
                  record.size, record.chunks, record.sha256, repr(record.create_time),
                  repr(now), retention_seconds])
        return text(answer)

    async def find_duplicate(self, user_id: str, collection: str, sha256: str) -> str | None:
        found = await self._redis.get(_Keys(user_id).dedupe(collection, sha256))
        return None if found is None else text(found)

    async def get(self, user_id: str, document_id: str) -> DocumentRecord | None:
        return _record(await self._redis.hgetall(_Keys(user_id).record(document_id)))

    async def get_many(self, user_id: str, document_ids: list[str]) -> list[DocumentRecord]:
        """The records of `document_ids` that exist, in order, in one round trip."""
        keys = _Keys(user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for document_id in document_ids:
                pipe.hgetall(keys.record(document_id))
            found = await pipe.execute()
        return [r for r in map(_record, found) if r is not None]

    async def remove(self, user_id: str, document_id: str) -> bool:
        keys = _Keys(user_id)
        removed = await self._remove(
            keys=[keys.record(document_id), keys.listing, keys.ids, keys.coll_docs,
                  keys.coll_chunks],
            args=[document_id, keys.dedupe_prefix, keys.collection_listing("")])
        return bool(removed)

    async def page(self, user_id: str, offset: int, size: int,
                   collection: str = "") -> tuple[list[str], int]:
        """Ids newest first from `offset` (of one collection, or all), and the total."""
        keys = _Keys(user_id)
        listing = keys.collection_listing(collection) if collection else keys.listing
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrevrange(listing, offset, offset + size - 1)
            pipe.zcard(listing)
            ids, total = await pipe.execute()
        return list(ids), int(total)

    async def committed(self, user_id: str, document_ids: list[str]) -> set[str]:
        if not document_ids:
            return set()
        flags = await self._redis.smismember(_Keys(user_id).ids, document_ids)
        return {d for d, present in zip(document_ids, flags, strict=True) if present}

    async def collections(self, user_id: str) -> dict[str, tuple[int, int]]:
        """Collection -> (documents, chunks)."""
        keys = _Keys(user_id)
        docs = text_hash(await self._redis.hgetall(keys.coll_docs))
        chunks = text_hash(await self._redis.hgetall(keys.coll_chunks))
        return {name: (int(count), int(chunks.get(name, 0))) for name, count in docs.items()}


def user_key_base(user_id: str) -> str:
    """The prefix (with the user's hash tag) of every key of one user's documents."""
    return f"document:{{{user_id}}}"


class _Keys:
    def __init__(self, user_id: str) -> None:
        base = user_key_base(user_id)
        self.listing = f"{base}:listing"
        self.ids = f"{base}:ids"
        self.coll_docs = f"{base}:collections:documents"
        self.coll_chunks = f"{base}:collections:chunks"
        self.dedupe_prefix = f"{base}:sha:"
        self._base = base

    def record(self, document_id: str) -> str:
        return f"{self._base}:doc:{document_id}"

    def collection_listing(self, collection: str) -> str:
        return f"{self._base}:listing:collection:{collection}"

    def dedupe(self, collection: str, sha256: str) -> str:
        return f"{self.dedupe_prefix}{collection}:{sha256}"


def _record(reply: Mapping[bytes | str, bytes | str]) -> DocumentRecord | None:
    if not reply:
        return None
    fields = text_hash(reply)
    return DocumentRecord(id=fields["id"], collection=fields["collection"],
                          filename=fields["filename"], content_type=fields["content_type"],
                          size=int(fields["size"]), chunks=int(fields["chunks"]),
                          sha256=fields["sha256"], create_time=float(fields["create_time"]))
