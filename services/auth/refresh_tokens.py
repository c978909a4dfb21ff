"""Opaque refresh tokens, stored hashed, rotated on every use, grouped in families.

A token reads `rt_<family>.<secret>`. Redis keeps only its SHA-256. Refreshing
spends the token and issues the next one in the same family; presenting a spent
token again means it leaked, so the whole family is revoked. Logout revokes the
family. Every key of a family shares its hash tag, so each script is atomic on
Redis Cluster too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from services.runtime.redis_client import RedisClient

_TOKEN_PATTERN = re.compile(r"^rt_([A-Za-z0-9_-]{16,64})\.([A-Za-z0-9_-]{32,128})$")

_ISSUE = """
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'state', 'active')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'user', ARGV[1], 'state', 'active')
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 'ok'
"""

# KEYS: family, presented token, next token. ARGV: ttl seconds.
_ROTATE = """
local user = redis.call('HGET', KEYS[2], 'user')
if not user then return {'missing'} end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return {'revoked'} end
if redis.call('HGET', KEYS[2], 'state') ~= 'active' then
  redis.call('HSET', KEYS[1], 'state', 'revoked', 'revoked_for', 'reuse')
  return {'reused'}
end
redis.call('HSET', KEYS[2], 'state', 'rotated')
redis.call('HSET', KEYS[3], 'user', user, 'state', 'active')
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {'ok', user}
"""

# KEYS: family, presented token. ARGV: expected user.
_REVOKE = """
local user = redis.call('HGET', KEYS[2], 'user')
if not user or user ~= ARGV[1] then return 'missing' end
redis.call('HSET', KEYS[1], 'state', 'revoked', 'revoked_for', 'logout')
return 'ok'
"""


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    expire_time: float


class RefreshRefused(Exception):
    """The refresh token is unknown, revoked or was reused; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefreshTokenStore:
    """Issues, rotates and revokes refresh tokens."""

    def __init__(self, redis: RedisClient, ttl_seconds: int) -> None:
        self._ttl = ttl_seconds
        self._issue = redis.register_script(_ISSUE)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)

    async def issue(self, user_id: str) -> IssuedRefreshToken:
        """Start a new family (a login) with its first token."""
        family = secrets.token_urlsafe(16)
        token = _new_token(family)
        await self._issue(keys=[_token_key(family, token), _family_key(family)],
                          args=[user_id, self._ttl])
        return IssuedRefreshToken(token=token, expire_time=time.time() + self._ttl)

    async def rotate(self, token: str) -> tuple[str, IssuedRefreshToken]:
        """Spend `token`; returns its user and the family's next token."""
        family = _family_of(token)
        following = _new_token(family)
        outcome = await self._rotate(
            keys=[_family_key(family), _token_key(family, token), _token_key(family, following)],
            args=[self._ttl],
        )
        if outcome[0] != "ok":
            raise RefreshRefused(outcome[0])
        return outcome[1], IssuedRefreshToken(token=following,
                                              expire_time=time.time() + self._ttl)

    async def revoke_family(self, token: str, user_id: str) -> None:
        """End the session `token` belongs to; it must be `user_id`'s."""
        family = _family_of(token)
        outcome = await self._revoke(keys=[_family_key(family), _token_key(family, token)],
                                     args=[user_id])
        if outcome != "ok":
            raise RefreshRefused("missing")


def _new_token(family: str) -> str:
    return f"rt_{family}.{secrets.token_urlsafe(32)}"


def _family_of(token: str) -> str:
    match = _TOKEN_PATTERN.match(token)
    if match is None:
        raise RefreshRefused("malformed")
    return match.group(1)


def _family_key(family: str) -> str:
    return f"auth:rt:{{{family}}}:family"


def _token_key(family: str, token: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f"auth:rt:{{{family}}}:token:{digest}"
