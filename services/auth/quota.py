"""Monthly token quotas: atomic reserve / extend / settle / release in Redis.

Per user and month (UTC) Redis holds the tokens charged (`used`), the live holds
(`holds`: id -> tokens, with `expiry`: id -> expiry ms and `checkpoints`: id ->
tokens delivered so far, as the caller last reported on extending), each
reservation's state (`states`: id -> held | settled | released | expired) and what
a closed hold was charged (`charged`: id -> tokens). Each operation is one Lua
script, so any number of chat replicas can race without overshooting a limit:
a hold is granted only if used + live holds + the new hold fit. The next operation
or read on that month closes expired holds, charging each its last checkpoint
(never more than the hold; nothing without one). Settle and release are
idempotent: repeating the same outcome answers OK and changes nothing, a different
second outcome is RESERVATION_CLOSED. A late settle of an expired hold charges the
real usage in place of the checkpoint; a late release takes the checkpoint back.
Keys share the user's hash tag.

Reservation ids read `<user>.<month>.<random>`, so an id alone locates its keys.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from services.runtime.errors import (
    FailedPrecondition,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
)
from services.runtime.redis_client import RedisClient

MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_RESERVATION_PATTERN = re.compile(r"^([0-9a-f]{32})\.(\d{4}-\d{2})\.([A-Za-z0-9_-]{16,})$")
_RETENTION_SECONDS = 400 * 86400  # a year of monthly history, plus slack

# Shared prelude: KEYS used, holds, expiry, states, limit, checkpoints, charged, ttls.
# Charges each expired hold its last checkpoint (capped at the hold; none: nothing),
# marks it expired, then computes now, used, reserved and limit (ARGV[1] is the
# default limit). Every operation and read runs it, so usage is never read stale.
_PRELUDE = """
local function keep(ttl)
  for _, i in ipairs({1, 2, 3, 4, 6, 7, 8}) do redis.call('EXPIRE', KEYS[i], ttl) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(expired) do
  local held = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  local charge = math.min(tonumber(redis.call('HGET', KEYS[6], id) or '0'), held)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[8], id)
  if redis.call('HGET', KEYS[4], id) == 'held' then
    redis.call('HSET', KEYS[4], id, 'expired')
    redis.call('HSET', KEYS[7], id, charge)
    if charge > 0 then redis.call('INCRBY', KEYS[1], charge) end
    keep(RETENTION)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
local limit = tonumber(redis.call('GET', KEYS[5]) or ARGV[1])
""".replace("RETENTION", str(_RETENTION_SECONDS))

# ARGV: default limit, id, tokens, ttl ms, retention s
_RESERVE = _PRELUDE + """
local tokens = tonumber(ARGV[3])
if used + reserved + tokens > limit then return {0, used, reserved, limit, 0} end
local expires = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], tokens)
redis.call('ZADD', KEYS[3], expires, ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'held')
redis.call('HSET', KEYS[8], ARGV[2], ARGV[4])
keep(ARGV[5])
return {1, used, reserved + tokens, limit, expires}
"""

# ARGV: default limit, id, additional tokens, ttl ms, delivered tokens (0: none).
# The checkpoint is recorded (it only grows) even when the growth does not fit. The
# hold lives on for the TTL it was reserved with (ARGV[4] for holds from before ttls).
_EXTEND = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit, 0, 0} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if state ~= 'held' or held < 0 then return {-2, used, reserved, limit, 0, 0} end
local delivered = tonumber(ARGV[5])
if delivered > tonumber(redis.call('HGET', KEYS[6], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[6], ARGV[2], delivered)
end
local extra = tonumber(ARGV[3])
if used + reserved + extra > limit then return {0, used, reserved, limit, 0, held} end
local expires = now + tonumber(redis.call('HGET', KEYS[8], ARGV[2]) or ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], held + extra)
redis.call('ZADD', KEYS[3], expires, ARGV[2])
return {1, used, reserved + extra, limit, expires, held + extra}
"""

# ARGV: default limit, id, used tokens, retention s. Returns the tokens this call
# charged (last). Settling again with the same usage answers OK and charges nothing;
# settling an expired hold brings its checkpoint charge to the real usage.
_SETTLE = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit, 0} end
local usage = tonumber(ARGV[3])
local charged = tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '-1')
if state == 'settled' and charged == usage then return {1, used, reserved, limit, 0} end
if state ~= 'held' and state ~= 'expired' then return {-2, used, reserved, limit, 0} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local delta = usage
if state == 'expired' then delta = usage - math.max(charged, 0) end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'settled')
redis.call('HSET', KEYS[7], ARGV[2], usage)
used = redis.call('INCRBY', KEYS[1], delta)
keep(ARGV[4])
return {1, used, reserved - held, limit, delta}
"""

# ARGV: default limit, id. Releasing again answers OK; releasing an expired hold
# takes back its checkpoint charge (the caller says nothing was delivered).
_RELEASE = _PRELUDE + """
local state = redis.call('HGET', KEYS[4], ARGV[2])
if not state then return {-1, used, reserved, limit} end
if state == 'released' then return {1, used, reserved, limit} end
if state ~= 'held' and state ~= 'expired' then return {-2, used, reserved, limit} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], 'released')
if state == 'expired' then
  local charged = tonumber(redis.call('HGET', KEYS[7], ARGV[2]) or '0')
  redis.call('HDEL', KEYS[7], ARGV[2])
  if charged > 0 then used = redis.call('DECRBY', KEYS[1], charged) end
end
return {1, used, reserved - held, limit}
"""

# ARGV: default limit
_READ = _PRELUDE + """
return {1, used, reserved, limit}
"""


@dataclass(frozen=True)
class QuotaSnapshot:
    """A user's month: tokens charged, held and allowed."""

    month: str
    used: int
    reserved: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used - self.reserved, 0)


@dataclass(frozen=True)
class Hold:
    """A granted reservation."""

    reservation_id: str
    user_id: str
    month: str
    tokens: int
    expire_time_ms: int


def current_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


class QuotaLedger:
    """Atomic quota operations for every user and month."""

    def __init__(self, redis: RedisClient, default_limit: int,
                 reservation_ttl_seconds: int) -> None:
        self._redis = redis
        self._default_limit = default_limit
        self._ttl_ms = reservation_ttl_seconds * 1000
        self._reserve = redis.register_script(_RESERVE)
        self._extend = redis.register_script(_EXTEND)
        self._settle = redis.register_script(_SETTLE)
        self._release = redis.register_script(_RELEASE)
        self._read = redis.register_script(_READ)

    async def reserve(self, user_id: str, tokens: int, ttl_seconds: float | None = None) -> tuple[
            Hold, QuotaSnapshot]:
        month = current_month()
        reservation_id = f"{user_id}.{month}.{secrets.token_urlsafe(16)}"
        ttl_ms = self._ttl_ms if not ttl_seconds else min(int(ttl_seconds * 1000), self._ttl_ms)
        granted, used, reserved, limit, expires = await self._reserve(
            keys=_keys(user_id, month),
            args=[self._default_limit, reservation_id, tokens, ttl_ms, _RETENTION_SECONDS])
        snapshot = QuotaSnapshot(month, int(used), int(reserved), int(limit))
        if not granted:
            raise _exhausted(user_id, snapshot, tokens)
        return Hold(reservation_id, user_id, month, tokens, int(expires)), snapshot

    async def extend(self, reservation_id: str, tokens: int,
                     delivered_tokens: int = 0) -> tuple[Hold, QuotaSnapshot]:
        """Grow a live hold by `tokens`, recording `delivered_tokens` (what the stream
        delivered so far) as its checkpoint: an expired hold is charged its last
        checkpoint, never more than the hold."""
        user_id, month = _parse(reservation_id)
        outcome, used, reserved, limit, expires, held = await self._extend(
            keys=_keys(user_id, month),
            args=[self._default_limit, reservation_id, tokens, self._ttl_ms,
                  delivered_tokens])
        snapshot = QuotaSnapshot(month, int(used), int(reserved), int(limit))
        _check_state(int(outcome), reservation_id, "extended")
        if not outcome:
            raise _exhausted(user_id, snapshot, tokens)
        return Hold(reservation_id, user_id, month, int(held), int(expires)), snapshot

    async def settle(self, reservation_id: str, used_tokens: int) -> tuple[int, QuotaSnapshot]:
        """Charge `used_tokens` and end the hold; returns the tokens this call charged
        (0 for a repeated identical settle, the difference to the checkpoint charge for
        an expired hold) and the month after it. A second, different outcome is
        RESERVATION_CLOSED."""
        user_id, month = _parse(reservation_id)
        outcome, used, reserved, limit, charged = await self._settle(
            keys=_keys(user_id, month),
            args=[self._default_limit, reservation_id, used_tokens, _RETENTION_SECONDS])
        _check_state(int(outcome), reservation_id, "settled")
        return int(charged), QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def release(self, reservation_id: str) -> QuotaSnapshot:
        user_id, month = _parse(reservation_id)
        outcome, used, reserved, limit = await self._release(
            keys=_keys(user_id, month), args=[self._default_limit, reservation_id])
        _check_state(int(outcome), reservation_id, "released")
        return QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def snapshot(self, user_id: str, month: str) -> QuotaSnapshot:
        _, used, reserved, limit = await self._read(keys=_keys(user_id, month),
                                                    args=[self._default_limit])
        return QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def limit(self, user_id: str) -> int:
        """The user's monthly limit: their override or the default."""
        override = await self._redis.get(_limit_key(user_id))
        return int(override) if override is not None else self._default_limit

    async def set_limit(self, user_id: str, limit: int) -> int:
        """Override a user's monthly limit; 0 restores the default. Returns the limit now."""
        key = _limit_key(user_id)
        if limit == 0:
            await self._redis.delete(key)
            return self._default_limit
        await self._redis.set(key, limit)
        return limit


def _keys(user_id: str, month: str) -> list[str]:
    base = f"auth:quota:{{{user_id}}}:{month}"
    return [f"{base}:used", f"{base}:holds", f"{base}:expiry", f"{base}:states",
            _limit_key(user_id), f"{base}:checkpoints", f"{base}:charged", f"{base}:ttls"]


def _limit_key(user_id: str) -> str:
    return f"auth:quota:{{{user_id}}}:limit"


def _parse(reservation_id: str) -> tuple[str, str]:
    match = _RESERVATION_PATTERN.match(reservation_id)
    if match is None:
        raise NotFound("reservation", reservation_id)
    return match.group(1), match.group(2)


def _check_state(outcome: int, reservation_id: str, verb: str) -> None:
    if outcome == -1:
        raise NotFound("reservation", reservation_id)
    if outcome == -2:
        raise FailedPrecondition(f"reservation {reservation_id!r} can no longer be {verb}",
                                 reason="RESERVATION_CLOSED",
                                 metadata={"reservation_id": reservation_id})


def _exhausted(user_id: str, snapshot: QuotaSnapshot, requested: int) -> ResourceExhausted:
    description = (f"monthly token quota of {snapshot.limit} for {snapshot.month}: "
                   f"{snapshot.used} used, {snapshot.reserved} held, {requested} requested")
    return ResourceExhausted(
        f"token quota exhausted: {description}",
        reason="TOKEN_QUOTA_EXHAUSTED",
        violations=[QuotaViolation(subject=f"users/{user_id}", description=description)],
        metadata={"month": snapshot.month, "limit": str(snapshot.limit),
                  "used": str(snapshot.used), "reserved": str(snapshot.reserved),
                  "requested": str(requested)},
    )
