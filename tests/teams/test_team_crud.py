"""TeamService over a real auth server and Redis: teams, members, roles, and the
permission and validation rules."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import field_mask_pb2
from llmmesh.auth.v1 import teams_pb2, teams_pb2_grpc

from services.auth.teams import TeamStore
from services.runtime.redis_client import redis_client
from tests.helpers import LoggedIn, error_info, field_violations, register_and_login
from tests.teams.conftest import add_member, make_team

pytestmark = pytest.mark.usefixtures("auth_server")


async def _code(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_create_get_list_update_delete(team_stub, auth_stub, alice: LoggedIn) -> None:
    team = await team_stub.CreateTeam(teams_pb2.CreateTeamRequest(team=teams_pb2.Team(
        display_name=" Research ", monthly_token_limit=5000,
        allowed_models=["echo", "slow", "echo"])), metadata=alice.metadata)
    assert team.name.startswith("teams/") and team.display_name == "Research"
    assert list(team.allowed_models) == ["echo", "slow"] and team.member_count == 1
    got = await team_stub.GetTeam(teams_pb2.GetTeamRequest(name=team.name),
                                  metadata=alice.metadata)
    assert got.create_time == team.create_time and got.monthly_token_limit == 5000
    listed = await team_stub.ListTeams(teams_pb2.ListTeamsRequest(), metadata=alice.metadata)
    assert [t.name for t in listed.teams] == [team.name]

    # AIP-134: only the masked field changes; without a mask, the fields that are set.
    updated = await team_stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
        team=teams_pb2.Team(name=team.name, display_name="ignored", allowed_models=[]),
        update_mask=field_mask_pb2.FieldMask(paths=["allowed_models"])),
        metadata=alice.metadata)
    assert updated.display_name == "Research" and list(updated.allowed_models) == []
    updated = await team_stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
        team=teams_pb2.Team(name=team.name, monthly_token_limit=7)), metadata=alice.metadata)
    assert updated.monthly_token_limit == 7 and updated.display_name == "Research"

    (me,) = (await team_stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(
        parent=team.name), metadata=alice.metadata)).members
    assert me.role == teams_pb2.TEAM_ROLE_OWNER and me.user == alice.user.name
    assert me.username == alice.user.username

    await team_stub.DeleteTeam(teams_pb2.DeleteTeamRequest(name=team.name),
                               metadata=alice.metadata)
    gone = await _code(team_stub.GetTeam(teams_pb2.GetTeamRequest(name=team.name),
                                         metadata=alice.metadata))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert not (await team_stub.ListTeams(teams_pb2.ListTeamsRequest(),
                                          metadata=alice.metadata)).teams
    # No longer in a team: free to create another.
    await team_stub.CreateTeam(teams_pb2.CreateTeamRequest(
        team=teams_pb2.Team(display_name="Again")), metadata=alice.metadata)


async def test_members_join_by_username_change_role_and_leave(team_stub, auth_stub) -> None:
    team = await make_team(team_stub, auth_stub)
    bob = await register_and_login(auth_stub)
    member = await team_stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
        parent=team.name, member=teams_pb2.TeamMember(username=bob.user.username)),
        metadata=team.owner.metadata)
    assert member.name == f"{team.name}/members/{bob.user_id}"
    assert member.role == teams_pb2.TEAM_ROLE_MEMBER and member.HasField("join_time")
    # A member sees the team and its members, but may not manage it.
    await team_stub.GetTeam(teams_pb2.GetTeamRequest(name=team.name), metadata=bob.metadata)
    listed = await team_stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(
        parent=team.name), metadata=bob.metadata)
    assert [m.user for m in listed.members] == [team.owner.user.name, bob.user.name]
    denied = await _code(team_stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
        team=teams_pb2.Team(name=team.name, display_name="Mine")), metadata=bob.metadata))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(denied).reason == "TEAM_OWNER_REQUIRED"
    denied = await _code(team_stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(
        name=f"{team.name}/members/{team.owner.user_id}"), metadata=bob.metadata))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED

    # The last owner can neither leave nor step down; with a second owner they can.
    last = await _code(team_stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(
        name=f"{team.name}/members/me"), metadata=team.owner.metadata))
    assert last.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(last).reason == "LAST_OWNER"
    step_down = await _code(team_stub.UpdateTeamMember(teams_pb2.UpdateTeamMemberRequest(
        member=teams_pb2.TeamMember(name=f"{team.name}/members/me",
                                    role=teams_pb2.TEAM_ROLE_MEMBER)),
        metadata=team.owner.metadata))
    assert error_info(step_down).reason == "LAST_OWNER"
    promoted = await team_stub.UpdateTeamMember(teams_pb2.UpdateTeamMemberRequest(
        member=teams_pb2.TeamMember(name=member.name, role=teams_pb2.TEAM_ROLE_OWNER),
        update_mask=field_mask_pb2.FieldMask(paths=["role"])), metadata=team.owner.metadata)
    assert promoted.role == teams_pb2.TEAM_ROLE_OWNER
    await team_stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(
        name=f"{team.name}/members/me"), metadata=team.owner.metadata)
    left = await _code(team_stub.GetTeam(teams_pb2.GetTeamRequest(name=team.name),
                                         metadata=team.owner.metadata))
    assert left.code() == grpc.StatusCode.NOT_FOUND


async def test_a_user_is_in_at_most_one_team(team_stub, auth_stub) -> None:
    first = await make_team(team_stub, auth_stub, members=1)
    second = await make_team(team_stub, auth_stub)
    (taken,) = first.members
    refused = await _code(add_member(team_stub, second.owner, second.name, taken))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused).reason == "ALREADY_IN_TEAM"
    again = await _code(add_member(team_stub, first.owner, first.name, taken))
    assert error_info(again).reason == "ALREADY_MEMBER"
    refused = await _code(team_stub.CreateTeam(teams_pb2.CreateTeamRequest(
        team=teams_pb2.Team(display_name="Own")), metadata=taken.metadata))
    assert error_info(refused).reason == "ALREADY_IN_TEAM"
    # Once removed by an owner, the user is free to join the other team.
    await team_stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(
        name=f"{first.name}/members/{taken.user_id}"), metadata=first.owner.metadata)
    await add_member(team_stub, second.owner, second.name, taken)


async def test_non_members_see_nothing(team_stub, auth_stub, alice: LoggedIn) -> None:
    team = await make_team(team_stub, auth_stub, limit=100)
    calls = [
        team_stub.GetTeam(teams_pb2.GetTeamRequest(name=team.name), metadata=alice.metadata),
        team_stub.GetTeam(teams_pb2.GetTeamRequest(name="teams/" + "0" * 32),
                          metadata=alice.metadata),
        team_stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(parent=team.name),
                                  metadata=alice.metadata),
        team_stub.GetTeamUsage(teams_pb2.GetTeamUsageRequest(
            name=f"{team.name}/usages/current"), metadata=alice.metadata),
        team_stub.DeleteTeam(teams_pb2.DeleteTeamRequest(name=team.name),
                             metadata=alice.metadata),
        add_member(team_stub, alice, team.name, alice),
    ]
    for call in calls:
        assert (await _code(call)).code() == grpc.StatusCode.NOT_FOUND
    unauthenticated = await _code(team_stub.ListTeams(teams_pb2.ListTeamsRequest()))
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("team", "fields"), [
    (teams_pb2.Team(), {"team.display_name"}),
    (teams_pb2.Team(display_name="x" * 101), {"team.display_name"}),
    (teams_pb2.Team(display_name="a\nb"), {"team.display_name"}),
    (teams_pb2.Team(display_name="ok", monthly_token_limit=-1), {"team.monthly_token_limit"}),
    (teams_pb2.Team(display_name="ok", allowed_models=["gpt 4", "../x"]),
     {"team.allowed_models"}),
    (teams_pb2.Team(monthly_token_limit=-5, allowed_models=[""]),
     {"team.display_name", "team.monthly_token_limit", "team.allowed_models"}),
])
async def test_create_validation(team_stub, alice: LoggedIn, team, fields) -> None:
    error = await _code(team_stub.CreateTeam(teams_pb2.CreateTeamRequest(team=team),
                                             metadata=alice.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == fields


async def test_name_and_mask_validation(team_stub, auth_stub) -> None:
    team = await make_team(team_stub, auth_stub)
    meta = team.owner.metadata
    cases: list[tuple[object, str]] = [
        (team_stub.GetTeam(teams_pb2.GetTeamRequest(name="teams/nope"), metadata=meta),
         "name"),
        (team_stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
            team=teams_pb2.Team(name=team.name),
            update_mask=field_mask_pb2.FieldMask(paths=["create_time"])), metadata=meta),
         "update_mask"),
        (team_stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
            team=teams_pb2.Team(name=team.name, monthly_token_limit=-3)), metadata=meta),
         "team.monthly_token_limit"),
        (team_stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
            parent=team.name, member=teams_pb2.TeamMember()), metadata=meta), "member.user"),
        (team_stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
            parent=team.name, member=teams_pb2.TeamMember(user="bob")), metadata=meta),
         "member.user"),
        (team_stub.UpdateTeamMember(teams_pb2.UpdateTeamMemberRequest(
            member=teams_pb2.TeamMember(name=f"{team.name}/members/me")), metadata=meta),
         "member.role"),
        (team_stub.GetTeamUsage(teams_pb2.GetTeamUsageRequest(
            name=f"{team.name}/usages/2026-13"), metadata=meta), "name"),
    ]
    for call, field in cases:
        error = await _code(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(error)
    unknown = await _code(team_stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
        parent=team.name, member=teams_pb2.TeamMember(username="nobody-here-at-all")),
        metadata=meta))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_ensure_member_is_the_identity_providers_hook(
        team_stub: teams_pb2_grpc.TeamServiceStub, auth_stub, redis_server) -> None:
    team = await make_team(team_stub, auth_stub)
    other = await make_team(team_stub, auth_stub)
    carol = await register_and_login(auth_stub)
    redis = redis_client(redis_server.url)
    try:
        store = TeamStore(redis)
        assert await store.ensure_member(team.team_id, carol.user_id)
        assert await store.ensure_member(team.team_id, carol.user_id)  # idempotent
        assert not await store.ensure_member(other.team_id, carol.user_id)  # one team
        assert not await store.ensure_member("f" * 32, carol.user_id)  # no such team
    finally:
        await redis.aclose()
    members = await team_stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(
        parent=team.name), metadata=carol.metadata)
    assert carol.user.name in [m.user for m in members.members]


@pytest.mark.parametrize("method", sorted(
    teams_pb2.DESCRIPTOR.services_by_name["TeamService"].methods_by_name))
async def test_garbage_bodies_are_invalid_argument_without_a_traceback(
        auth_channel, alice: LoggedIn, caplog, method: str) -> None:
    caplog.set_level(logging.WARNING)
    call = auth_channel.unary_unary(f"/llmmesh.auth.v1.TeamService/{method}")
    error = await _code(call(b"\xff" * 16, metadata=alice.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "MALFORMED_REQUEST"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
