"""The internal quota API: atomic reserve / extend / settle / release over real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2
from llmmesh.auth.v1 import auth_pb2, quota_pb2

from tests.conftest import SERVICE_METADATA
from tests.helpers import LoggedIn, error_info, eventually, field_violations, quota_failure


async def _limit(quota_stub, user_id: str, limit: int) -> None:
    await quota_stub.SetTokenLimit(
        quota_pb2.SetTokenLimitRequest(user_id=user_id, monthly_token_limit=limit),
        metadata=SERVICE_METADATA)


async def _reserve(quota_stub, user_id: str, tokens: int, ttl_seconds: float | None = None):
    request = quota_pb2.ReserveTokensRequest(user_id=user_id, tokens=tokens)
    if ttl_seconds is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_seconds),
                                                   nanos=int(ttl_seconds % 1 * 1e9)))
    return await quota_stub.ReserveTokens(request, metadata=SERVICE_METADATA)


async def _usage(auth_stub, user: LoggedIn) -> auth_pb2.Usage:
    return await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                                    metadata=user.metadata)


async def test_reserve_settle_release(quota_stub, auth_stub, alice: LoggedIn) -> None:
    held = await _reserve(quota_stub, alice.user_id, 1000)
    assert held.reservation.tokens == 1000
    assert held.state.tokens_reserved == 1000 and held.state.tokens_used == 0
    usage = await _usage(auth_stub, alice)
    assert (usage.tokens_used, usage.tokens_reserved, usage.tokens_remaining) == (0, 1000, 99_000)

    settled = await quota_stub.SettleReservation(
        quota_pb2.SettleReservationRequest(reservation_id=held.reservation.reservation_id,
                                           used_tokens=420), metadata=SERVICE_METADATA)
    assert settled.charged_tokens == 420
    assert (settled.state.tokens_used, settled.state.tokens_reserved) == (420, 0)

    other = await _reserve(quota_stub, alice.user_id, 500)
    released = await quota_stub.ReleaseReservation(
        quota_pb2.ReleaseReservationRequest(reservation_id=other.reservation.reservation_id),
        metadata=SERVICE_METADATA)
    assert (released.state.tokens_used, released.state.tokens_reserved) == (420, 0)
    usage = await _usage(auth_stub, alice)
    assert (usage.tokens_used, usage.tokens_remaining) == (420, 100_000 - 420)


async def test_a_hold_that_does_not_fit_is_refused_with_quota_failure(quota_stub,
                                                                       alice: LoggedIn) -> None:
    await _limit(quota_stub, alice.user_id, 1000)
    await _reserve(quota_stub, alice.user_id, 600)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reserve(quota_stub, alice.user_id, 401)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "TOKEN_QUOTA_EXHAUSTED"
    (violation,) = quota_failure(caught.value).violations
    assert violation.subject == f"users/{alice.user_id}"
    assert "600 held" in violation.description
    await _reserve(quota_stub, alice.user_id, 400)  # exactly fits


async def test_fifty_concurrent_reservations_admit_at_most_what_fits(
        quota_stub, auth_stub, alice: LoggedIn) -> None:
    await _limit(quota_stub, alice.user_id, 10 * 700 + 699)  # room for 10 holds of 700
    outcomes = await asyncio.gather(*(_reserve(quota_stub, alice.user_id, 700)
                                      for _ in range(50)), return_exceptions=True)
    admitted = [o for o in outcomes if isinstance(o, quota_pb2.ReserveTokensResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(admitted) == 10 and len(refused) == 40
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Settle all of them at their worst case concurrently: usage stays within the limit.
    await asyncio.gather(*(quota_stub.SettleReservation(
        quota_pb2.SettleReservationRequest(reservation_id=a.reservation.reservation_id,
                                           used_tokens=700), metadata=SERVICE_METADATA)
        for a in admitted))
    usage = await _usage(auth_stub, alice)
    assert usage.tokens_used == 7000 <= usage.token_limit
    assert usage.tokens_reserved == 0


async def test_unsettled_holds_expire(quota_stub, auth_stub, alice: LoggedIn) -> None:
    await _limit(quota_stub, alice.user_id, 1000)
    held = await _reserve(quota_stub, alice.user_id, 1000, ttl_seconds=0.3)
    with pytest.raises(grpc.aio.AioRpcError):
        await _reserve(quota_stub, alice.user_id, 1)
    usage = await eventually(lambda: _usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="hold expiry")
    assert usage.tokens_remaining == 1000
    # The expired hold can no longer grow, but its real usage is still charged.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
            reservation_id=held.reservation.reservation_id, additional_tokens=1),
            metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    settled = await quota_stub.SettleReservation(quota_pb2.SettleReservationRequest(
        reservation_id=held.reservation.reservation_id, used_tokens=30),
        metadata=SERVICE_METADATA)
    assert settled.state.tokens_used == 30



async def test_extend_grows_a_hold_only_when_it_fits(quota_stub, alice: LoggedIn) -> None:
    await _limit(quota_stub, alice.user_id, 1000)
    held = await _reserve(quota_stub, alice.user_id, 500)
    grown = await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
        reservation_id=held.reservation.reservation_id, additional_tokens=300),
        metadata=SERVICE_METADATA)
    assert grown.reservation.tokens == 800 and grown.state.tokens_reserved == 800
    # The limit is lowered mid-stream: growth stops fitting.
    await _limit(quota_stub, alice.user_id, 850)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
            reservation_id=held.reservation.reservation_id, additional_tokens=100),
            metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_settle_is_once_only_and_a_retry_answers_ok(quota_stub, alice: LoggedIn) -> None:
    held = await _reserve(quota_stub, alice.user_id, 10)
    request = quota_pb2.SettleReservationRequest(
        reservation_id=held.reservation.reservation_id, used_tokens=10)
    first = await quota_stub.SettleReservation(request, metadata=SERVICE_METADATA)
    assert first.charged_tokens == 10
    retried = await quota_stub.SettleReservation(request, metadata=SERVICE_METADATA)
    assert retried.charged_tokens == 0 and retried.state == first.state
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a different outcome
        await quota_stub.SettleReservation(quota_pb2.SettleReservationRequest(
            reservation_id=held.reservation.reservation_id, used_tokens=11),
            metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError):
        await quota_stub.ReleaseReservation(quota_pb2.ReleaseReservationRequest(
            reservation_id=held.reservation.reservation_id), metadata=SERVICE_METADATA)
    again = await _reserve(quota_stub, alice.user_id, 1)
    assert again.state.tokens_used == first.state.tokens_used  # charged exactly once


@pytest.mark.parametrize("reservation_id", ["nope", "0" * 32 + ".2026-01.abcdefghijklmnop"])
async def test_unknown_reservations(quota_stub, reservation_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.SettleReservation(quota_pb2.SettleReservationRequest(
            reservation_id=reservation_id, used_tokens=1), metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("request_", "fields"), [
    (quota_pb2.ReserveTokensRequest(), {"user_id", "tokens"}),
    (quota_pb2.ReserveTokensRequest(user_id="0" * 32, tokens=-5), {"tokens"}),
    (quota_pb2.ReserveTokensRequest(user_id="bob", tokens=5), {"user_id"}),
])
async def test_reserve_validation(quota_stub, request_, fields) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota_stub.ReserveTokens(request_, metadata=SERVICE_METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == fields


async def test_quota_methods_refuse_callers_without_the_service_credential(
        quota_stub, alice: LoggedIn) -> None:
    request = quota_pb2.ReserveTokensRequest(user_id=alice.user_id, tokens=10)
    for metadata in [(), alice.metadata, (("x-llmmesh-service-token", "guess" * 10),)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await quota_stub.ReserveTokens(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "SERVICE_CREDENTIAL_REQUIRED"


async def test_a_users_own_limit_shows_on_their_profile_and_can_be_cleared(
        quota_stub, auth_stub, alice: LoggedIn) -> None:
    await _limit(quota_stub, alice.user_id, 2500)
    me = await auth_stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                 metadata=alice.metadata)
    assert me.monthly_token_limit == 2500
    assert (await _usage(auth_stub, alice)).token_limit == 2500
    cleared = await quota_stub.SetTokenLimit(
        quota_pb2.SetTokenLimitRequest(user_id=alice.user_id, monthly_token_limit=0),
        metadata=SERVICE_METADATA)
    assert cleared.monthly_token_limit == 100_000
    assert (await _usage(auth_stub, alice)).token_limit == 100_000
