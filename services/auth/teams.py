"""Teams and their members in Redis.

A team has a display name, a monthly token budget (0: none) and a model allowlist
(empty: every model); members are users with a role, OWNER or MEMBER. A user belongs
to at most one team: the team whose budget their usage draws on. Every change is one
Lua script over keys of the `{teams}` hash tag (the team record, its members and the
user -> team index), so concurrent adds of one user to two teams, or two owners
leaving at once, can never break a rule. The team's budget counters live in the quota
ledger's keyspace (quota.py), under the team's own hash tag.

Keys: `auth:{teams}:team:<id>` (hash), `auth:{teams}:members:<id>` (hash user id ->
`role:join_ms`), `auth:{teams}:membership` (hash user id -> team id).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from services.runtime.redis_client import RedisClient, text, text_hash

_PREFIX = "auth:{teams}"
_MEMBERSHIP = f"{_PREFIX}:membership"


class Role(StrEnum):
    OWNER = "owner"
    MEMBER = "member"


@dataclass(frozen=True)
class TeamRecord:
    id: str
    display_name: str
    monthly_token_limit: int
    allowed_models: tuple[str, ...]
    create_time_ms: int
    update_time_ms: int
    member_count: int = 0

    def allows(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


@dataclass(frozen=True)
class MemberRecord:
    user_id: str
    role: Role
    join_time_ms: int


class TeamConflict(Exception):
    """A membership rule refused a change; `reason` says which (UPPER_SNAKE)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# KEYS: team, members, membership. ARGV: id, owner, name, limit, models, now ms
_CREATE = """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 'ALREADY_IN_TEAM' end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'display_name', ARGV[3], 'limit', ARGV[4],
           'models', ARGV[5], 'create_time', ARGV[6], 'update_time', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[2], 'owner:' .. ARGV[6])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 'OK'
"""

# KEYS: team, members, membership. ARGV: team id, user, role, now ms
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NO_TEAM' end
local current = redis.call('HGET', KEYS[3], ARGV[2])
if current == ARGV[1] then return 'ALREADY_MEMBER' end
if current then return 'ALREADY_IN_TEAM' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 'OK'
"""

# The owners left if `user` stopped being one.
_OWNERS_WITHOUT = """
local function owners_without(user)
  local n = 0
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if all[i] ~= user and string.sub(all[i + 1], 1, 6) == 'owner:' then n = n + 1 end
  end
  return n
end
"""

# KEYS: team, members, membership. ARGV: team id, user
_REMOVE = _OWNERS_WITHOUT + """
local entry = redis.call('HGET', KEYS[2], ARGV[2])
if not entry then return 'NOT_MEMBER' end
if string.sub(entry, 1, 6) == 'owner:' and owners_without(ARGV[2]) == 0 then
  return 'LAST_OWNER'
end
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[2]) end
return 'OK'
"""

# KEYS: team, members. ARGV: user, role
_SET_ROLE = _OWNERS_WITHOUT + """
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 'NOT_MEMBER' end
local joined = string.match(entry, ':(%d+)$')
if ARGV[2] ~= 'owner' and string.sub(entry, 1, 6) == 'owner:'
    and owners_without(ARGV[1]) == 0 then
  return 'LAST_OWNER'
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. joined)
return 'OK'
"""

# KEYS: team, members, membership. ARGV: team id
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NO_TEAM' end
for _, user in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('HGET', KEYS[3], user) == ARGV[1] then redis.call('HDEL', KEYS[3], user) end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 'OK'
"""

# KEYS: team. ARGV: field, value, ... then now ms last
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NO_TEAM' end
for i = 1, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'update_time', ARGV[#ARGV])
return 'OK'
"""


class TeamStore:
    """Creates, reads and changes teams and memberships (decoded Redis client)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._create = redis.register_script(_CREATE)
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)
        self._set_role = redis.register_script(_SET_ROLE)
        self._delete = redis.register_script(_DELETE)
        self._update = redis.register_script(_UPDATE)

    async def create(self, owner_id: str, display_name: str, monthly_token_limit: int,
                     allowed_models: tuple[str, ...], team_id: str | None = None) -> TeamRecord:
        """A new team (id `team_id`, or a new one) with `owner_id` its owner;
        TeamConflict(ALREADY_IN_TEAM) when the owner already belongs to a team."""
        team_id, now = team_id or new_team_id(), _now_ms()
        outcome = await self._create(
            keys=_keys(team_id),
            args=[team_id, owner_id, display_name, monthly_token_limit,
                  json.dumps(list(allowed_models)), now])
        _check(outcome)
        return TeamRecord(team_id, display_name, monthly_token_limit, allowed_models,
                          now, now, 1)

    async def get(self, team_id: str, *, count: bool = True) -> TeamRecord | None:
        """The team (with its member count unless `count` is False: 0), or None."""
        fields = text_hash(await self._redis.hgetall(_team_key(team_id)))
        if not fields:
            return None
        members = int(await self._redis.hlen(_members_key(team_id))) if count else 0
        return TeamRecord(
            id=fields["id"], display_name=fields["display_name"],
            monthly_token_limit=int(fields["limit"]),
            allowed_models=tuple(json.loads(fields["models"])),
            create_time_ms=int(fields["create_time"]),
            update_time_ms=int(fields["update_time"]), member_count=members)

    async def update(self, team_id: str, *, display_name: str | None = None,
                     monthly_token_limit: int | None = None,
                     allowed_models: tuple[str, ...] | None = None) -> TeamRecord | None:
        """Change the given fields; None when the team is gone."""
        changes: list[str | int] = []
        if display_name is not None:
            changes += ["display_name", display_name]
        if monthly_token_limit is not None:
            changes += ["limit", monthly_token_limit]
        if allowed_models is not None:
            changes += ["models", json.dumps(list(allowed_models))]
        outcome = await self._update(keys=[_team_key(team_id)], args=[*changes, _now_ms()])
        if text(outcome) == "NO_TEAM":
            return None
        return await self.get(team_id)

    async def delete(self, team_id: str) -> bool:
        """Delete the team; its members belong to no team afterwards. False: gone."""
        return text(await self._delete(keys=_keys(team_id), args=[team_id])) == "OK"

    async def team_of(self, user_id: str) -> str | None:
        """The id of the team `user_id` belongs to, if any."""
        team_id = await self._redis.hget(_MEMBERSHIP, user_id)
        return None if team_id is None else text(team_id)

    async def team_of_user(self, user_id: str, *, count: bool = True) -> TeamRecord | None:
        """The team `user_id` belongs to, if any (see `get` for `count`)."""
        team_id = await self.team_of(user_id)
        return None if team_id is None else await self.get(team_id, count=count)

    async def member(self, team_id: str, user_id: str) -> MemberRecord | None:
        entry = await self._redis.hget(_members_key(team_id), user_id)
        return None if entry is None else _member(user_id, text(entry))

    async def members(self, team_id: str) -> list[MemberRecord]:
        """Every member, oldest first (then by id)."""
        entries = text_hash(await self._redis.hgetall(_members_key(team_id)))
        found = [_member(user_id, entry) for user_id, entry in entries.items()]
        return sorted(found, key=lambda m: (m.join_time_ms, m.user_id))

    async def add(self, team_id: str, user_id: str, role: Role = Role.MEMBER) -> MemberRecord:
        """TeamConflict: NO_TEAM, ALREADY_MEMBER, ALREADY_IN_TEAM (another team)."""
        now = _now_ms()
        _check(await self._add(keys=_keys(team_id), args=[team_id, user_id, role.value, now]))
        return MemberRecord(user_id, role, now)

    async def ensure_member(self, team_id: str, user_id: str) -> bool:
        """Put `user_id` in team `team_id` as a MEMBER if they belong to no team
        (for identity providers mapping groups to teams). Idempotent; a no-op when the
        team does not exist or the user is in another team. True: they are a member."""
        try:
            await self.add(team_id, user_id)
        except TeamConflict as conflict:
            return conflict.reason == "ALREADY_MEMBER"
        return True

    async def remove(self, team_id: str, user_id: str) -> None:
        """TeamConflict: NOT_MEMBER, LAST_OWNER."""
        _check(await self._remove(keys=_keys(team_id), args=[team_id, user_id]))

    async def set_role(self, team_id: str, user_id: str, role: Role) -> MemberRecord:
        """TeamConflict: NOT_MEMBER, LAST_OWNER (the last owner stepping down)."""
        _check(await self._set_role(keys=_keys(team_id)[:2], args=[user_id, role.value]))
        member = await self.member(team_id, user_id)
        if member is None:
            raise TeamConflict("NOT_MEMBER")
        return member


def new_team_id() -> str:
    return uuid.uuid4().hex


def _keys(team_id: str) -> list[str]:
    return [_team_key(team_id), _members_key(team_id), _MEMBERSHIP]


def _team_key(team_id: str) -> str:
    return f"{_PREFIX}:team:{team_id}"


def _members_key(team_id: str) -> str:
    return f"{_PREFIX}:members:{team_id}"


def _member(user_id: str, entry: str) -> MemberRecord:
    role, _, joined = entry.partition(":")
    return MemberRecord(user_id, Role(role), int(joined))


def _check(outcome: object) -> None:
    reason = text(outcome)  # type: ignore[arg-type]
    if reason != "OK":
        raise TeamConflict(reason)


def _now_ms() -> int:
    return int(time.time() * 1000)
