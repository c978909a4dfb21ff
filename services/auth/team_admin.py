"""Team rules: who may see and change a team, and what a member may use.

Non-members get NOT_FOUND for a team (its existence is not leaked); members who are
not owners get PERMISSION_DENIED for owner actions; membership rules (one team per
user, the last owner stays) are FAILED_PRECONDITION with a reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.auth.quota import QuotaLedger, QuotaSnapshot
from services.auth.teams import (
    MemberRecord,
    Role,
    TeamConflict,
    TeamRecord,
    TeamStore,
    new_team_id,
)
from services.auth.users import UserStore
from services.runtime.errors import FailedPrecondition, NotFound, PermissionDenied

_CONFLICTS = {
    "ALREADY_IN_TEAM": "the user already belongs to a team (a user is in at most one "
                       "team: they must leave it first)",
    "ALREADY_MEMBER": "the user is already a member of this team",
    "LAST_OWNER": "a team keeps at least one owner: make another member an owner first, "
                  "or delete the team",
}


@dataclass(frozen=True)
class TeamUsage:
    team_id: str
    snapshot: QuotaSnapshot
    by_member: dict[str, int]  # user id -> tokens charged
    usernames: dict[str, str]  # user id -> username, for those who still exist


class Teams:
    """Team operations on behalf of a calling user (ids, not resource names)."""

    def __init__(self, store: TeamStore, users: UserStore, ledger: QuotaLedger) -> None:
        self.store = store
        self._users = users
        self._ledger = ledger

    async def create(self, caller: str, display_name: str, monthly_token_limit: int,
                     allowed_models: tuple[str, ...]) -> TeamRecord:
        # The budget is in place before the team exists: no member ever draws on a
        # team without it.
        team_id = new_team_id()
        await self._ledger.set_team_limit(team_id, monthly_token_limit)
        try:
            return await self.store.create(caller, display_name, monthly_token_limit,
                                           allowed_models, team_id)
        except TeamConflict as conflict:
            await self._ledger.clear_team_limit(team_id)
            raise _conflict(conflict, caller) from None

    async def get(self, caller: str, team_id: str) -> TeamRecord:
        await self._membership(caller, team_id)
        return await self._team(team_id)

    async def of_user(self, caller: str) -> list[TeamRecord]:
        team = await self.store.team_of_user(caller)
        return [] if team is None else [team]

    async def update(self, caller: str, team_id: str, *, display_name: str | None,
                     monthly_token_limit: int | None,
                     allowed_models: tuple[str, ...] | None) -> TeamRecord:
        await self._owner(caller, team_id)
        if monthly_token_limit is not None:
            await self._ledger.set_team_limit(team_id, monthly_token_limit)
        team = await self.store.update(team_id, display_name=display_name,
                                       monthly_token_limit=monthly_token_limit,
                                       allowed_models=allowed_models)
        if team is None:
            raise NotFound("team", f"teams/{team_id}")
        return team

    async def delete(self, caller: str, team_id: str) -> None:
        await self._owner(caller, team_id)
        await self.store.delete(team_id)
        await self._ledger.clear_team_limit(team_id)

    async def add_member(self, caller: str, team_id: str, *, user_id: str | None,
                         username: str | None, role: Role) -> tuple[MemberRecord, str]:
        """The new member and their username."""
        await self._owner(caller, team_id)
        record = (await self._users.get(user_id) if user_id
                  else await self._users.find(username or ""))
        if record is None:
            raise NotFound("user", f"users/{user_id}" if user_id else str(username))
        try:
            return await self.store.add(team_id, record.id, role), record.username
        except TeamConflict as conflict:
            raise _conflict(conflict, record.id, team_id) from None

    async def members(self, caller: str, team_id: str) -> list[tuple[MemberRecord, str]]:
        await self._membership(caller, team_id)
        found = await self.store.members(team_id)
        names = await self._usernames([m.user_id for m in found])
        return [(m, names.get(m.user_id, "")) for m in found]

    async def set_role(self, caller: str, team_id: str, member_id: str,
                       role: Role) -> tuple[MemberRecord, str]:
        await self._owner(caller, team_id)
        try:
            member = await self.store.set_role(team_id, member_id, role)
        except TeamConflict as conflict:
            raise _conflict(conflict, member_id, team_id) from None
        return member, (await self._usernames([member_id])).get(member_id, "")

    async def remove(self, caller: str, team_id: str, member_id: str) -> None:
        """Owners remove anyone; any member removes themself (leaves)."""
        if member_id == caller:
            await self._membership(caller, team_id)
        else:
            await self._owner(caller, team_id)
        try:
            await self.store.remove(team_id, member_id)
        except TeamConflict as conflict:
            raise _conflict(conflict, member_id, team_id) from None

    async def usage(self, caller: str, team_id: str, month: str) -> TeamUsage:
        await self._membership(caller, team_id)
        snapshot, by_member = await self._ledger.team_snapshot(team_id, month)
        for member in await self.store.members(team_id):
            by_member.setdefault(member.user_id, 0)
        return TeamUsage(team_id, snapshot, by_member, await self._usernames(list(by_member)))

    async def _team(self, team_id: str) -> TeamRecord:
        team = await self.store.get(team_id)
        if team is None:
            raise NotFound("team", f"teams/{team_id}")
        return team

    async def _membership(self, caller: str, team_id: str) -> MemberRecord:
        member = await self.store.member(team_id, caller)
        if member is None:
            raise NotFound("team", f"teams/{team_id}")
        return member

    async def _owner(self, caller: str, team_id: str) -> None:
        member = await self._membership(caller, team_id)
        if member.role is not Role.OWNER:
            raise PermissionDenied("only the team's owners may do this",
                                   reason="TEAM_OWNER_REQUIRED",
                                   metadata={"team": f"teams/{team_id}"})

    async def _usernames(self, user_ids: list[str]) -> dict[str, str]:
        records = await asyncio.gather(*(self._users.get(u) for u in user_ids))
        return {r.id: r.username for r in records if r is not None}


def _conflict(conflict: TeamConflict, user_id: str,
              team_id: str | None = None) -> NotFound | FailedPrecondition:
    if conflict.reason == "NOT_MEMBER":
        return NotFound("team member", f"teams/{team_id}/members/{user_id}")
    if conflict.reason == "NO_TEAM":
        return NotFound("team", f"teams/{team_id}")
    return FailedPrecondition(_CONFLICTS.get(conflict.reason, conflict.reason),
                              reason=conflict.reason,
                              metadata={"user": f"users/{user_id}"})
