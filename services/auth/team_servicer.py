"""gRPC transport for teams: TeamService, and QuotaService with team budgets and model
allowlists (a member's hold also draws on the team's budget; a model outside the
team's allowlist is PERMISSION_DENIED before anything is held)."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from llmmesh.auth.v1 import quota_pb2, teams_pb2, teams_pb2_grpc

from services.auth import team_validation as rules
from services.auth.quota import QuotaLedger
from services.auth.servicer import (
    QuotaServicer,
    _reservation,
    _state,
    _tokens_violation,
    _user_id_violation,
)
from services.auth.team_admin import Teams, TeamUsage
from services.auth.teams import MemberRecord, Role, TeamRecord, TeamStore
from services.runtime.context import current_user
from services.runtime.errors import FieldViolation, InvalidArgument, PermissionDenied, check_fields
from services.runtime.paging import Page, paginate
from services.runtime.timestamps import timestamp_from_millis

_ROLES = {teams_pb2.TEAM_ROLE_OWNER: Role.OWNER, teams_pb2.TEAM_ROLE_MEMBER: Role.MEMBER,
          teams_pb2.TEAM_ROLE_UNSPECIFIED: Role.MEMBER}
_ROLE_PROTOS = {Role.OWNER: teams_pb2.TEAM_ROLE_OWNER, Role.MEMBER: teams_pb2.TEAM_ROLE_MEMBER}

Context = grpc.aio.ServicerContext
TEAM_SERVICE = teams_pb2.DESCRIPTOR.services_by_name["TeamService"].full_name


class TeamServicer(teams_pb2_grpc.TeamServiceServicer):
    """The public team API (a user's access token; see team_admin.Teams for the rules)."""

    def __init__(self, teams: Teams) -> None:
        self._teams = teams

    async def CreateTeam(self, request: teams_pb2.CreateTeamRequest,
                         context: Context[teams_pb2.CreateTeamRequest, teams_pb2.Team],
                         ) -> teams_pb2.Team:
        caller = current_user().subject
        team = request.team
        rules.check_team(team.display_name, team.monthly_token_limit, team.allowed_models)
        return _team(await self._teams.create(caller, team.display_name.strip(),
                                              team.monthly_token_limit,
                                              rules.unique(team.allowed_models)))

    async def GetTeam(self, request: teams_pb2.GetTeamRequest,
                      context: Context[teams_pb2.GetTeamRequest, teams_pb2.Team],
                      ) -> teams_pb2.Team:
        caller = current_user().subject
        return _team(await self._teams.get(caller, rules.team_id(request.name, "name")))

    async def ListTeams(self, request: teams_pb2.ListTeamsRequest,
                        context: Context[teams_pb2.ListTeamsRequest,
                                         teams_pb2.ListTeamsResponse],
                        ) -> teams_pb2.ListTeamsResponse:
        caller = current_user().subject
        page = paginate(await self._teams.of_user(caller), request, "teams", default=50,
                        maximum=100)
        return teams_pb2.ListTeamsResponse(teams=[_team(t) for t in page.items],
                                           next_page_token=page.next_page_token)

    async def UpdateTeam(self, request: teams_pb2.UpdateTeamRequest,
                         context: Context[teams_pb2.UpdateTeamRequest, teams_pb2.Team],
                         ) -> teams_pb2.Team:
        caller = current_user().subject
        team = request.team
        team_id = rules.team_id(team.name, "team.name")
        paths = rules.update_paths(list(request.update_mask.paths), team.display_name,
                                   team.monthly_token_limit, team.allowed_models)
        check_fields([
            rules.display_name_violation(team.display_name, "team.display_name")
            if "display_name" in paths else None,
            rules.limit_violation(team.monthly_token_limit, "team.monthly_token_limit")
            if "monthly_token_limit" in paths else None,
            rules.models_violation(team.allowed_models, "team.allowed_models")
            if "allowed_models" in paths else None])
        return _team(await self._teams.update(
            caller, team_id,
            display_name=team.display_name.strip() if "display_name" in paths else None,
            monthly_token_limit=(team.monthly_token_limit
                                 if "monthly_token_limit" in paths else None),
            allowed_models=(rules.unique(team.allowed_models)
                            if "allowed_models" in paths else None)))

    async def DeleteTeam(self, request: teams_pb2.DeleteTeamRequest,
                         context: Context[teams_pb2.DeleteTeamRequest, empty_pb2.Empty],
                         ) -> empty_pb2.Empty:
        caller = current_user().subject
        await self._teams.delete(caller, rules.team_id(request.name, "name"))
        return empty_pb2.Empty()

    async def CreateTeamMember(self, request: teams_pb2.CreateTeamMemberRequest,
                               context: Context[teams_pb2.CreateTeamMemberRequest,
                                                teams_pb2.TeamMember],
                               ) -> teams_pb2.TeamMember:
        caller = current_user().subject
        team_id = rules.team_id(request.parent, "parent")
        member = request.member
        user = rules.USER_NAME.match(member.user)
        if bool(member.user) == bool(member.username) or (member.user and user is None):
            raise InvalidArgument([FieldViolation(
                "member.user", "name the user to add: member.user (users/{user}) or "
                               "member.username, one of them")])
        added, username = await self._teams.add_member(
            caller, team_id, user_id=user.group(1) if user else None,
            username=member.username or None, role=_ROLES.get(member.role, Role.MEMBER))
        return _member(team_id, added, username)

    async def ListTeamMembers(self, request: teams_pb2.ListTeamMembersRequest,
                              context: Context[teams_pb2.ListTeamMembersRequest,
                                               teams_pb2.ListTeamMembersResponse],
                              ) -> teams_pb2.ListTeamMembersResponse:
        caller = current_user().subject
        team_id = rules.team_id(request.parent, "parent")
        members = await self._teams.members(caller, team_id)
        page: Page[tuple[MemberRecord, str]] = paginate(
            members, request, f"members:{team_id}", default=50, maximum=100)
        return teams_pb2.ListTeamMembersResponse(
            members=[_member(team_id, m, name) for m, name in page.items],
            next_page_token=page.next_page_token)

    async def UpdateTeamMember(self, request: teams_pb2.UpdateTeamMemberRequest,
                               context: Context[teams_pb2.UpdateTeamMemberRequest,
                                                teams_pb2.TeamMember],
                               ) -> teams_pb2.TeamMember:
        caller = current_user().subject
        team_id, member_id = rules.member_name(request.member.name, "member.name", caller)
        paths = list(request.update_mask.paths)
        check_fields([
            FieldViolation("update_mask", "only role can change")
            if paths and paths != ["role"] else None,
            FieldViolation("member.role", "must be TEAM_ROLE_OWNER or TEAM_ROLE_MEMBER")
            if request.member.role not in _ROLE_PROTOS.values() else None])
        member, username = await self._teams.set_role(caller, team_id, member_id,
                                                      _ROLES[request.member.role])
        return _member(team_id, member, username)

    async def DeleteTeamMember(self, request: teams_pb2.DeleteTeamMemberRequest,
                               context: Context[teams_pb2.DeleteTeamMemberRequest,
                                                empty_pb2.Empty],
                               ) -> empty_pb2.Empty:
        caller = current_user().subject
        team_id, member_id = rules.member_name(request.name, "name", caller)
        await self._teams.remove(caller, team_id, member_id)
        return empty_pb2.Empty()

    async def GetTeamUsage(self, request: teams_pb2.GetTeamUsageRequest,
                           context: Context[teams_pb2.GetTeamUsageRequest,
                                            teams_pb2.TeamUsage],
                           ) -> teams_pb2.TeamUsage:
        caller = current_user().subject
        team_id, month = rules.usage_name(request.name)
        return _usage(await self._teams.usage(caller, team_id, month))


class TeamQuotaServicer(QuotaServicer):
    """QuotaService (internal) with teams: holds on the team's budget too, the model
    allowlist enforced, and GetEntitlements for chat's model list."""

    def __init__(self, ledger: QuotaLedger, teams: TeamStore) -> None:
        super().__init__(ledger)
        self._quota = ledger
        self._teams = teams

    async def ReserveTokens(
            self, request: quota_pb2.ReserveTokensRequest,
            context: Context[quota_pb2.ReserveTokensRequest, quota_pb2.ReserveTokensResponse],
    ) -> quota_pb2.ReserveTokensResponse:
        check_fields([_user_id_violation(request.user_id, "user_id"),
                      _tokens_violation(request.tokens, "tokens", minimum=1),
                      rules.models_violation([request.model], "model")
                      if request.model else None])
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else None
        if ttl is not None and ttl <= 0:
            raise InvalidArgument([FieldViolation("ttl", "must be positive")])
        team = await self._teams.team_of_user(request.user_id, count=False)
        if team is not None and request.model and not team.allows(request.model):
            raise PermissionDenied(
                f"model {request.model!r} is not allowed for team teams/{team.id}; "
                f"allowed: {', '.join(team.allowed_models)}",
                reason="MODEL_NOT_ALLOWED",
                metadata={"model": request.model, "team": f"teams/{team.id}"})
        hold, snapshot = await self._quota.reserve(request.user_id, request.tokens, ttl,
                                                   team.id if team else None)
        return quota_pb2.ReserveTokensResponse(reservation=_reservation(hold),
                                               state=_state(snapshot))

    async def GetEntitlements(
            self, request: quota_pb2.GetEntitlementsRequest,
            context: Context[quota_pb2.GetEntitlementsRequest,
                             quota_pb2.GetEntitlementsResponse],
    ) -> quota_pb2.GetEntitlementsResponse:
        check_fields([_user_id_violation(request.user_id, "user_id")])
        team = await self._teams.team_of_user(request.user_id, count=False)
        if team is None:
            return quota_pb2.GetEntitlementsResponse()
        return quota_pb2.GetEntitlementsResponse(team=f"teams/{team.id}",
                                                 allowed_models=team.allowed_models)


def _team(team: TeamRecord) -> teams_pb2.Team:
    return teams_pb2.Team(name=f"teams/{team.id}", display_name=team.display_name,
                          monthly_token_limit=team.monthly_token_limit,
                          allowed_models=team.allowed_models,
                          create_time=timestamp_from_millis(team.create_time_ms),
                          update_time=timestamp_from_millis(team.update_time_ms),
                          member_count=team.member_count)


def _member(team_id: str, member: MemberRecord, username: str) -> teams_pb2.TeamMember:
    return teams_pb2.TeamMember(name=f"teams/{team_id}/members/{member.user_id}",
                                user=f"users/{member.user_id}", username=username,
                                role=_ROLE_PROTOS[member.role],
                                join_time=timestamp_from_millis(member.join_time_ms))


def _usage(usage: TeamUsage) -> teams_pb2.TeamUsage:
    snapshot = usage.snapshot
    return teams_pb2.TeamUsage(
        name=f"teams/{usage.team_id}/usages/{snapshot.month}", month=snapshot.month,
        tokens_used=snapshot.used, tokens_reserved=snapshot.reserved,
        token_limit=snapshot.limit,
        tokens_remaining=snapshot.remaining if snapshot.limit > 0 else 0,
        members=[teams_pb2.TeamMemberUsage(
            member=f"teams/{usage.team_id}/members/{user_id}",
            username=usage.usernames.get(user_id, ""), tokens_used=tokens)
            for user_id, tokens in sorted(usage.by_member.items(),
                                          key=lambda item: (-item[1], item[0]))])
