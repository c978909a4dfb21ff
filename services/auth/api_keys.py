"""API keys: durable bearer credentials for programs, stored as SHA-256 hashes only.

A secret reads `llmk_<prefix><random>`: `prefix` (8 characters) finds the record, the
SHA-256 of the whole secret must match its stored hash (compared in constant time).
The secret has 256 bits of entropy, so one unsalted SHA-256 is as safe as a slow hash
and costs microseconds.

Redis keys: the record and its owner's index share the owner's hash tag
(`auth:{u:<user>}:...`), so every script touching both runs on one Cluster node; the
prefix lookup `auth:apikey-prefix:<prefix>` is written alone (SET NX) before them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.runtime.redis_client import RedisClient, scored_members, text, text_hash

SECRET_PREFIX = "llmk_"  # noqa: S105 — the visible start of every key
PREFIX_LENGTH = 8
_ALPHABET = string.ascii_letters + string.digits
_SECRET = re.compile(rf"^{SECRET_PREFIX}([A-Za-z0-9]{{{PREFIX_LENGTH}}})([A-Za-z0-9]{{43}})$")
LAST_USE_WRITE_INTERVAL_SECONDS = 5.0

# KEYS: record, owner's index. ARGV: id, user, display name, prefix, hash, scopes,
# create time, expire time (0: none).
_CREATE = """
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'user', ARGV[2], 'display_name', ARGV[3],
           'prefix', ARGV[4], 'hash', ARGV[5], 'scopes', ARGV[6], 'create_time', ARGV[7],
           'expire_time', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return 'ok'
"""


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    user_id: str
    display_name: str
    prefix: str
    secret_hash: str
    scopes: tuple[str, ...]
    create_time: float
    expire_time: float | None
    revoke_time: float | None
    last_use_time: float | None

    @property
    def visible_prefix(self) -> str:
        return f"{SECRET_PREFIX}{self.prefix}"

    def expired(self, now: float) -> bool:
        return self.expire_time is not None and now >= self.expire_time


def is_api_key(credential: str) -> bool:
    return credential.startswith(SECRET_PREFIX)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


class ApiKeyStore:
    """Creates, reads, lists and revokes keys (a client with `decode_responses=True`)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._create = redis.register_script(_CREATE)
        self._last_use_written: dict[str, float] = {}

    async def create(self, user_id: str, display_name: str, scopes: Sequence[str],
                     expire_time: float | None) -> tuple[ApiKeyRecord, str]:
        """A new key and its secret (returned only here)."""
        key_id = uuid.uuid4().hex[:16]
        for _ in range(5):
            prefix = _random(PREFIX_LENGTH)
            if await self._redis.set(_prefix_key(prefix), f"{user_id}:{key_id}", nx=True):
                break
        else:  # 62**8 prefixes: five collisions in a row means something else is wrong
            raise RuntimeError("could not allocate an API key prefix")
        secret = f"{SECRET_PREFIX}{prefix}{_random(43)}"  # 43 of 62 symbols: 256 bits
        record = ApiKeyRecord(id=key_id, user_id=user_id, display_name=display_name,
                              prefix=prefix, secret_hash=secret_hash(secret),
                              scopes=tuple(scopes), create_time=time.time(),
                              expire_time=expire_time, revoke_time=None, last_use_time=None)
        await self._create(keys=[_record_key(user_id, key_id), _index_key(user_id)],
                           args=[key_id, user_id, display_name, prefix, record.secret_hash,
                                 " ".join(scopes), repr(record.create_time),
                                 repr(expire_time or 0)])
        return record, secret

    async def get(self, user_id: str, key_id: str) -> ApiKeyRecord | None:
        fields = text_hash(await self._redis.hgetall(_record_key(user_id, key_id)))
        return _record(fields) if fields else None

    async def list(self, user_id: str, offset: int, count: int
                   ) -> tuple[list[ApiKeyRecord], bool]:
        """Keys newest first from `offset`; whether more follow."""
        members = scored_members(await self._redis.zrevrange(
            _index_key(user_id), offset, offset + count, withscores=True))
        found = []
        for key_id, _ in members[:count]:
            record = await self.get(user_id, key_id)
            if record is not None:
                found.append(record)
        return found, len(members) > count

    async def revoke(self, user_id: str, key_id: str) -> ApiKeyRecord | None:
        key = _record_key(user_id, key_id)
        if not await self._redis.exists(key):
            return None
        await self._redis.hsetnx(key, "revoke_time", repr(time.time()))
        return await self.get(user_id, key_id)

    async def find(self, secret: str) -> ApiKeyRecord | None:
        """The record a secret belongs to, or None (unknown, malformed or wrong secret)."""
        match = _SECRET.match(secret)
        if match is None:
            return None
        owner = await self._redis.get(_prefix_key(match.group(1)))
        if owner is None:
            return None
        user_id, _, key_id = text(owner).partition(":")
        record = await self.get(user_id, key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, secret_hash(secret)):
            return None
        return record

    async def touch(self, record: ApiKeyRecord, now: float) -> None:
        """Record a use, at most once every few seconds per key (per process)."""
        last = self._last_use_written.get(record.id)
        if last is not None and now - last < LAST_USE_WRITE_INTERVAL_SECONDS:
            return
        if len(self._last_use_written) > 10_000:
            self._last_use_written.clear()
        self._last_use_written[record.id] = now
        await self._redis.hset(_record_key(record.user_id, record.id), "last_use_time",
                               repr(now))


def _record(fields: dict[str, str]) -> ApiKeyRecord:
    def optional(name: str) -> float | None:
        value = float(fields.get(name) or 0)
        return value or None

    return ApiKeyRecord(
        id=fields["id"], user_id=fields["user"], display_name=fields["display_name"],
        prefix=fields["prefix"], secret_hash=fields["hash"],
        scopes=tuple(fields.get("scopes", "").split()),
        create_time=float(fields["create_time"]), expire_time=optional("expire_time"),
        revoke_time=optional("revoke_time"), last_use_time=optional("last_use_time"))


def _record_key(user_id: str, key_id: str) -> str:
    return f"auth:{{u:{user_id}}}:apikey:{key_id}"


def _index_key(user_id: str) -> str:
    return f"auth:{{u:{user_id}}}:apikeys"


def _prefix_key(prefix: str) -> str:
    return f"auth:apikey-prefix:{prefix}"
