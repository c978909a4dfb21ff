"""Monthly token quotas: atomic reserve / extend / settle / release in Redis.

Per user and month (UTC) Redis holds the tokens charged (`used`), the live holds
(`holds`: id -> tokens, with `expiry`: id -> expiry ms and `checkpoints`: id ->
tokens delivered so far, as the caller last reported on extending), each
reservation's state (`states`: id -> held | settled | released | expired) and what
a closed hold was charged (`charged`: id -> tokens). Each operation is one Lua
script (quota_scripts.py), so any number of chat replicas can race without
overshooting a limit: a hold is granted only if used + live holds + the new hold
fit. The next operation or read on that month closes expired holds, charging each
its last checkpoint (never more than the hold; nothing without one). Settle and
release are idempotent: repeating the same outcome answers OK and changes nothing,
a different second outcome is RESERVATION_CLOSED. A late settle of an expired hold
charges the real usage in place of the checkpoint; a late release takes the
checkpoint back. Keys share the user's hash tag.

A team member's hold is also a hold on the team's month, kept by the same scripts
in the team's keyspace (its own hash tag, plus per-member charges): on a Redis
Cluster the two live on different nodes, so no one script can take both. Reserve
takes the team's hold first, then the user's, and releases the team's when the
user's is refused: neither budget is ever overshot; under contention a hold may at
worst be refused while another's doomed team hold is being given back. Extend grows
the team's hold first and shrinks it back when the user's refuses; settle and
release act on the user's hold, then the team's (both idempotent, so a retry after a
failure between the two finishes the job); each side expires its hold by itself,
charged the same checkpoint.

Reservation ids read `<user>.<month>.<random>[.<team>]`, so an id alone locates its keys.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from services.auth import quota_scripts as scripts
from services.auth.quota_scripts import RETENTION_SECONDS
from services.runtime.errors import (
    FailedPrecondition,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
)
from services.runtime.redis_client import RedisClient, text_hash

MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_RESERVATION_PATTERN = re.compile(
    r"^([0-9a-f]{32})\.(\d{4}-\d{2})\.([A-Za-z0-9_-]{16,})(?:\.([0-9a-f]{32}))?$")


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
    """Atomic quota operations for every user (and team) and month."""

    def __init__(self, redis: RedisClient, default_limit: int,
                 reservation_ttl_seconds: int) -> None:
        self._redis = redis
        self._default_limit = default_limit
        self._ttl_ms = reservation_ttl_seconds * 1000
        self._reserve = redis.register_script(scripts.RESERVE)
        self._extend = redis.register_script(scripts.EXTEND)
        self._settle = redis.register_script(scripts.SETTLE)
        self._release = redis.register_script(scripts.RELEASE)
        self._read = redis.register_script(scripts.READ)

    async def reserve(self, user_id: str, tokens: int, ttl_seconds: float | None = None,
                      team_id: str | None = None) -> tuple[Hold, QuotaSnapshot]:
        """Hold `tokens` on the user's month and, for a member, on `team_id`'s too;
        ResourceExhausted (QuotaFailure naming the user or the team) when either
        cannot cover them."""
        month = current_month()
        reservation_id = f"{user_id}.{month}.{secrets.token_urlsafe(16)}"
        ttl_ms = self._ttl_ms if not ttl_seconds else min(int(ttl_seconds * 1000), self._ttl_ms)
        if team_id is not None:
            reservation_id += f".{team_id}"
            granted, used, reserved, limit, _ = await self._reserve(
                keys=_team_keys(team_id, month),
                args=[0, reservation_id, tokens, ttl_ms, RETENTION_SECONDS, user_id])
            if not granted:
                raise _exhausted(f"teams/{team_id}", QuotaSnapshot(
                    month, int(used), int(reserved), int(limit)), tokens, team_id=team_id)
        try:
            granted, used, reserved, limit, expires = await self._reserve(
                keys=_keys(user_id, month),
                args=[self._default_limit, reservation_id, tokens, ttl_ms, RETENTION_SECONDS])
        except BaseException:
            if team_id is not None:
                await self._give_back(team_id, month, reservation_id)
            raise
        snapshot = QuotaSnapshot(month, int(used), int(reserved), int(limit))
        if not granted:
            if team_id is not None:
                await self._give_back(team_id, month, reservation_id)
            raise _exhausted(f"users/{user_id}", snapshot, tokens)
        return Hold(reservation_id, user_id, month, tokens, int(expires)), snapshot

    async def extend(self, reservation_id: str, tokens: int,
                     delivered_tokens: int = 0) -> tuple[Hold, QuotaSnapshot]:
        """Grow a live hold by `tokens`, recording `delivered_tokens` (what the stream
        delivered so far) as its checkpoint: an expired hold is charged its last
        checkpoint, never more than the hold. A member's hold grows on the team's
        month first; growth the user's quota refuses is taken back there."""
        user_id, month, team_id = _parse(reservation_id)
        team_refused: QuotaSnapshot | None = None
        if team_id is not None:
            outcome, used, reserved, limit, _, _ = await self._extend(
                keys=_team_keys(team_id, month),
                args=[0, reservation_id, tokens, self._ttl_ms, delivered_tokens])
            _check_state(int(outcome), reservation_id, "extended")
            if not outcome:
                team_refused = QuotaSnapshot(month, int(used), int(reserved), int(limit))
        outcome, used, reserved, limit, expires, held = await self._extend(
            keys=_keys(user_id, month),
            args=[self._default_limit, reservation_id, 0 if team_refused else tokens,
                  self._ttl_ms, delivered_tokens])
        snapshot = QuotaSnapshot(month, int(used), int(reserved), int(limit))
        if team_id is not None and team_refused is None and int(outcome) != 1 and tokens:
            await self._extend(keys=_team_keys(team_id, month),
                               args=[0, reservation_id, -tokens, self._ttl_ms, 0])
        _check_state(int(outcome), reservation_id, "extended")
        if team_refused is not None:
            assert team_id is not None
            raise _exhausted(f"teams/{team_id}", team_refused, tokens, team_id=team_id)
        if not outcome:
            raise _exhausted(f"users/{user_id}", snapshot, tokens)
        return Hold(reservation_id, user_id, month, int(held), int(expires)), snapshot

    async def settle(self, reservation_id: str, used_tokens: int) -> tuple[int, QuotaSnapshot]:
        """Charge `used_tokens` and end the hold (on the team's month too); returns the
        tokens this call charged the user (0 for a repeated identical settle, the
        difference to the checkpoint charge for an expired hold) and the user's month
        after it. A second, different outcome is RESERVATION_CLOSED."""
        user_id, month, team_id = _parse(reservation_id)
        outcome, used, reserved, limit, charged = await self._settle(
            keys=_keys(user_id, month),
            args=[self._default_limit, reservation_id, used_tokens, RETENTION_SECONDS])
        _check_state(int(outcome), reservation_id, "settled")
        if team_id is not None:
            await self._settle(keys=_team_keys(team_id, month),
                               args=[0, reservation_id, used_tokens, RETENTION_SECONDS])
        return int(charged), QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def release(self, reservation_id: str) -> QuotaSnapshot:
        user_id, month, team_id = _parse(reservation_id)
        outcome, used, reserved, limit = await self._release(
            keys=_keys(user_id, month), args=[self._default_limit, reservation_id])
        _check_state(int(outcome), reservation_id, "released")
        if team_id is not None:
            await self._give_back(team_id, month, reservation_id)
        return QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def snapshot(self, user_id: str, month: str) -> QuotaSnapshot:
        _, used, reserved, limit = await self._read(keys=_keys(user_id, month),
                                                    args=[self._default_limit])
        return QuotaSnapshot(month, int(used), int(reserved), int(limit))

    async def team_snapshot(self, team_id: str, month: str) -> tuple[QuotaSnapshot,
                                                                      dict[str, int]]:
        """A team's month (limit 0: none) and the tokens charged per member id."""
        keys = _team_keys(team_id, month)
        _, used, reserved, limit = await self._read(keys=keys, args=[0])
        by_member = text_hash(await self._redis.hgetall(keys[8]))
        return (QuotaSnapshot(month, int(used), int(reserved), int(limit)),
                {member: int(tokens) for member, tokens in by_member.items()})

    async def set_team_limit(self, team_id: str, limit: int) -> None:
        """The team's monthly budget (0: none), in the team's keyspace."""
        await self._redis.set(_team_limit_key(team_id), limit)

    async def clear_team_limit(self, team_id: str) -> None:
        await self._redis.delete(_team_limit_key(team_id))

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

    async def _give_back(self, team_id: str, month: str, reservation_id: str) -> None:
        """Release the team's side of a hold (idempotent; a closed one stays closed)."""
        await self._release(keys=_team_keys(team_id, month), args=[0, reservation_id])


def _keys(user_id: str, month: str) -> list[str]:
    base = f"auth:quota:{{{user_id}}}:{month}"
    return [f"{base}:used", f"{base}:holds", f"{base}:expiry", f"{base}:states",
            _limit_key(user_id), f"{base}:checkpoints", f"{base}:charged", f"{base}:ttls"]


def _limit_key(user_id: str) -> str:
    return f"auth:quota:{{{user_id}}}:limit"


def _team_keys(team_id: str, month: str) -> list[str]:
    base = f"auth:quota:{{team:{team_id}}}:{month}"
    return [f"{base}:used", f"{base}:holds", f"{base}:expiry", f"{base}:states",
            _team_limit_key(team_id), f"{base}:checkpoints", f"{base}:charged",
            f"{base}:ttls", f"{base}:by_member", f"{base}:members"]


def _team_limit_key(team_id: str) -> str:
    return f"auth:quota:{{team:{team_id}}}:limit"


def _parse(reservation_id: str) -> tuple[str, str, str | None]:
    match = _RESERVATION_PATTERN.match(reservation_id)
    if match is None:
        raise NotFound("reservation", reservation_id)
    return match.group(1), match.group(2), match.group(4)


def _check_state(outcome: int, reservation_id: str, verb: str) -> None:
    if outcome == -1:
        raise NotFound("reservation", reservation_id)
    if outcome == -2:
        raise FailedPrecondition(f"reservation {reservation_id!r} can no longer be {verb}",
                                 reason="RESERVATION_CLOSED",
                                 metadata={"reservation_id": reservation_id})


def _exhausted(subject: str, snapshot: QuotaSnapshot, requested: int,
               team_id: str | None = None) -> ResourceExhausted:
    whose = "team's monthly token budget" if team_id else "monthly token quota"
    description = (f"{whose} of {snapshot.limit} for {snapshot.month}: "
                   f"{snapshot.used} used, {snapshot.reserved} held, {requested} requested")
    metadata = {"month": snapshot.month, "limit": str(snapshot.limit),
                "used": str(snapshot.used), "reserved": str(snapshot.reserved),
                "requested": str(requested)}
    if team_id:
        metadata["team"] = f"teams/{team_id}"
    return ResourceExhausted(
        f"token quota exhausted: {description}",
        reason="TOKEN_QUOTA_EXHAUSTED",
        violations=[QuotaViolation(subject=subject, description=description)],
        metadata=metadata,
    )
