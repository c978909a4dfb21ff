"""Users in Redis, with usernames and emails unique (case-insensitively) by one
atomic script: of any number of concurrent registrations of a name, exactly one wins.

Keys share the `{users}` hash tag so the uniqueness script stays atomic on Redis Cluster.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from services.runtime.redis_client import RedisClient, text, text_hash

KEY_PREFIX = "auth:{users}"  # one hash tag: scripts touch several user keys at once

_CREATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'username' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'email' end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'username', ARGV[2], 'email', ARGV[3],
           'password_hash', ARGV[4], 'create_time', ARGV[5])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1])
return 'ok'
"""


@dataclass(frozen=True)
class UserRecord:
    id: str
    username: str
    email: str
    password_hash: str
    create_time: float


class DuplicateUser(Exception):
    """The username or email is taken; `field` says which."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class UserStore:
    """Creates and reads users (on a client with `decode_responses=True`)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._create = redis.register_script(_CREATE)

    async def create(self, username: str, email: str, password_hash: str) -> UserRecord:
        record = UserRecord(id=uuid.uuid4().hex, username=username, email=email,
                            password_hash=password_hash, create_time=time.time())
        outcome = await self._create(
            keys=[user_key(record.id), username_key(username), email_key(email)],
            args=[record.id, username, email, password_hash, repr(record.create_time)],
        )
        if outcome != "ok":
            raise DuplicateUser(outcome)
        return record

    async def username_taken(self, username: str) -> bool:
        return bool(await self._redis.exists(username_key(username)))

    async def get(self, user_id: str) -> UserRecord | None:
        fields = text_hash(await self._redis.hgetall(user_key(user_id)))
        if not fields:
            return None
        return UserRecord(id=fields["id"], username=fields["username"], email=fields["email"],
                          password_hash=fields["password_hash"],
                          create_time=float(fields["create_time"]))

    async def find(self, username_or_email: str) -> UserRecord | None:
        key = (email_key(username_or_email) if "@" in username_or_email
               else username_key(username_or_email))
        user_id = await self._redis.get(key)
        return None if user_id is None else await self.get(text(user_id))


def user_key(user_id: str) -> str:
    """The user record's key (one hash tag for every user key: scripts touch several)."""
    return f"{KEY_PREFIX}:user:{user_id}"


def username_key(username: str) -> str:
    return f"{KEY_PREFIX}:username:{username.lower()}"


def email_key(email: str) -> str:
    return f"{KEY_PREFIX}:email:{email.lower()}"
