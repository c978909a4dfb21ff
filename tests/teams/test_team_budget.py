"""A team's monthly budget through QuotaService and GetTeamUsage: a member's hold is a
hold on their own quota and on the team's, refused when either cannot cover it, never
overshooting under concurrency; settle, release and expiry act on both."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2
from llmmesh.auth.v1 import auth_pb2, quota_pb2, teams_pb2

from tests.conftest import SERVICE_METADATA
from tests.helpers import error_info, eventually, quota_failure
from tests.teams.conftest import make_team, set_user_limit, team_usage

pytestmark = pytest.mark.usefixtures("auth_server")


async def _reserve(quota_stub, user_id: str, tokens: int, *, model: str = "",
                   ttl_seconds: float | None = None) -> quota_pb2.ReserveTokensResponse:
    request = quota_pb2.ReserveTokensRequest(user_id=user_id, tokens=tokens, model=model)
    if ttl_seconds is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_seconds),
                                                   nanos=int(ttl_seconds % 1 * 1e9)))
    return await quota_stub.ReserveTokens(request, metadata=SERVICE_METADATA)


async def _settle(quota_stub, reservation_id: str, used: int):  # type: ignore[no-untyped-def]
    return await quota_stub.SettleReservation(quota_pb2.SettleReservationRequest(
        reservation_id=reservation_id, used_tokens=used), metadata=SERVICE_METADATA)


async def test_fifty_concurrent_holds_from_fifty_members_never_overshoot(
        team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=49, limit=10 * 700 + 699)
    everyone = [team.owner, *team.members]
    outcomes = await asyncio.gather(*(_reserve(quota_stub, u.user_id, 700) for u in everyone),
                                    return_exceptions=True)
    granted = [o for o in outcomes if isinstance(o, quota_pb2.ReserveTokensResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    # Each member's own quota has room: the team's budget alone decides, exactly.
    assert len(granted) == 10 and len(refused) == 40
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {quota_failure(e).violations[0].subject for e in refused} == {team.name}
    usage = await team_usage(team_stub, team)
    assert usage.tokens_reserved == 700 * len(granted) <= usage.token_limit
    # The refused members' own quotas hold nothing: the team side was given back.
    await asyncio.gather(*(_settle(quota_stub, g.reservation.reservation_id, 700)
                           for g in granted))
    usage = await team_usage(team_stub, team)
    assert usage.tokens_used == 700 * len(granted) <= usage.token_limit
    assert usage.tokens_reserved == 0
    charged = {m.member.rpartition("/")[2]: m.tokens_used for m in usage.members}
    assert sum(charged.values()) == usage.tokens_used and len(charged) == 50
    # What is left still admits exactly what fits.
    room = usage.token_limit - usage.tokens_used
    with pytest.raises(grpc.aio.AioRpcError):
        await _reserve(quota_stub, team.owner.user_id, room + 1)
    await _reserve(quota_stub, team.owner.user_id, room)


async def test_both_budgets_tight_under_contention_and_no_team_hold_leaks(
        team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=4, limit=7 * 100 + 99)
    everyone = [team.owner, *team.members]
    for user in everyone:
        await set_user_limit(quota_stub, user.user_id, 2 * 100 + 99)  # 2 holds each
    outcomes = await asyncio.gather(
        *(_reserve(quota_stub, u.user_id, 100) for u in everyone for _ in range(10)),
        return_exceptions=True)
    granted = [o for o in outcomes if isinstance(o, quota_pb2.ReserveTokensResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    per_user = {u.user_id: sum(g.reservation.user_id == u.user_id for g in granted)
                for u in everyone}
    assert max(per_user.values()) <= 2 and 1 <= len(granted) <= 7
    # Every refused hold's team side was given back: the team holds exactly the granted.
    usage = await team_usage(team_stub, team)
    assert usage.tokens_reserved == 100 * len(granted)
    mine = await asyncio.gather(*(auth_stub.GetUsage(auth_pb2.GetUsageRequest(
        name="users/me/usages/current"), metadata=u.metadata) for u in everyone))
    assert sum(m.tokens_reserved for m in mine) == usage.tokens_reserved


async def test_the_users_own_quota_still_applies_inside_a_team(
        team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=50_000)
    (member,) = team.members
    await set_user_limit(quota_stub, member.user_id, 1000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reserve(quota_stub, member.user_id, 1001)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_failure(caught.value).violations[0].subject == member.user.name
    usage = await team_usage(team_stub, team)
    assert usage.tokens_reserved == 0  # the team's hold was given back
    held = await _reserve(quota_stub, member.user_id, 1000)
    assert (await team_usage(team_stub, team)).tokens_reserved == 1000
    await quota_stub.ReleaseReservation(quota_pb2.ReleaseReservationRequest(
        reservation_id=held.reservation.reservation_id), metadata=SERVICE_METADATA)
    usage = await team_usage(team_stub, team)
    assert (usage.tokens_used, usage.tokens_reserved, usage.tokens_remaining) == (0, 0, 50_000)


async def test_settle_charges_user_team_and_member_once(team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=10_000)
    (member,) = team.members
    held = await _reserve(quota_stub, member.user_id, 800)
    settled = await _settle(quota_stub, held.reservation.reservation_id, 300)
    assert settled.charged_tokens == 300 and settled.state.tokens_used == 300
    again = await _settle(quota_stub, held.reservation.reservation_id, 300)  # a retry
    assert again.charged_tokens == 0
    usage = await team_usage(team_stub, team)
    assert (usage.tokens_used, usage.tokens_reserved, usage.token_limit,
            usage.tokens_remaining) == (300, 0, 10_000, 9_700)
    by_member = {m.username: m.tokens_used for m in usage.members}
    assert by_member == {member.user.username: 300, team.owner.user.username: 0}
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a different outcome
        await _settle(quota_stub, held.reservation.reservation_id, 301)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await team_usage(team_stub, team)).tokens_used == 300


async def test_extension_draws_on_the_team_budget(team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=1000)
    (member,) = team.members
    held = await _reserve(quota_stub, member.user_id, 600)
    grown = await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
        reservation_id=held.reservation.reservation_id, additional_tokens=300,
        delivered_tokens=100), metadata=SERVICE_METADATA)
    assert grown.reservation.tokens == 900
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
            reservation_id=held.reservation.reservation_id, additional_tokens=101),
            metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_failure(caught.value).violations[0].subject == team.name
    # The user's side did not grow either: both still hold 900.
    assert (await team_usage(team_stub, team)).tokens_reserved == 900
    # The user's quota refusing growth takes the team's growth back.
    await set_user_limit(quota_stub, member.user_id, 950)
    with pytest.raises(grpc.aio.AioRpcError):
        await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
            reservation_id=held.reservation.reservation_id, additional_tokens=60),
            metadata=SERVICE_METADATA)
    assert (await team_usage(team_stub, team)).tokens_reserved == 900


async def test_an_expired_hold_charges_user_and_team_its_checkpoint(
        team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=5000)
    (member,) = team.members
    held = await _reserve(quota_stub, member.user_id, 1000, ttl_seconds=0.5)
    await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
        reservation_id=held.reservation.reservation_id, delivered_tokens=120),
        metadata=SERVICE_METADATA)
    usage = await eventually(lambda: team_usage(team_stub, team),
                             lambda u: u.tokens_reserved == 0, what="the team hold's expiry")
    assert usage.tokens_used == 120
    assert {m.username: m.tokens_used for m in usage.members}[member.user.username] == 120
    mine = await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                                    metadata=member.metadata)
    assert (mine.tokens_used, mine.tokens_reserved) == (120, 0)
    # A late settle replaces the checkpoint charge with the real usage, on both.
    settled = await _settle(quota_stub, held.reservation.reservation_id, 150)
    assert settled.charged_tokens == 30
    usage = await team_usage(team_stub, team)
    assert usage.tokens_used == 150
    assert {m.username: m.tokens_used for m in usage.members}[member.user.username] == 150


async def test_a_model_outside_the_allowlist_is_refused_before_any_hold(
        team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=5000, models=("echo",))
    (member,) = team.members
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reserve(quota_stub, member.user_id, 10, model="slow")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(caught.value)
    assert info.reason == "MODEL_NOT_ALLOWED"
    assert dict(info.metadata) == {"model": "slow", "team": team.name}
    assert (await team_usage(team_stub, team)).tokens_reserved == 0
    await _reserve(quota_stub, member.user_id, 10, model="echo")
    entitlements = await quota_stub.GetEntitlements(quota_pb2.GetEntitlementsRequest(
        user_id=member.user_id), metadata=SERVICE_METADATA)
    assert (entitlements.team, list(entitlements.allowed_models)) == (team.name, ["echo"])
    # Outside any team: every model, no team.
    none = await quota_stub.GetEntitlements(quota_pb2.GetEntitlementsRequest(
        user_id="0" * 32), metadata=SERVICE_METADATA)
    assert (none.team, list(none.allowed_models)) == ("", [])


async def test_usage_of_a_past_month_and_no_budget(team_stub, auth_stub, quota_stub) -> None:
    team = await make_team(team_stub, auth_stub)  # no team budget: members' own quotas only
    held = await _reserve(quota_stub, team.owner.user_id, 90_000)
    await _settle(quota_stub, held.reservation.reservation_id, 90_000)
    usage = await team_usage(team_stub, team)
    assert (usage.tokens_used, usage.token_limit, usage.tokens_remaining) == (90_000, 0, 0)
    past = await team_stub.GetTeamUsage(teams_pb2.GetTeamUsageRequest(
        name=f"{team.name}/usages/2020-01"), metadata=team.owner.metadata)
    assert past.month == "2020-01" and past.tokens_used == 0
    assert [m.tokens_used for m in past.members] == [0]
