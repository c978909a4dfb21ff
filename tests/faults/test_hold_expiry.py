"""A hold keeps the lifetime it was reserved with: extending it (what a stream does as it
grows, and what checkpoints its delivery) pushes its expiry by that TTL, not by auth's
default. Otherwise a chat process configured for short holds that dies after one
extension leaves the user's quota held for auth's default (5 minutes)."""

from __future__ import annotations

import time

from google.protobuf import duration_pb2
from llmmesh.auth.v1 import quota_pb2, quota_pb2_grpc

from tests.conftest import SERVICE_METADATA
from tests.helpers import LoggedIn

TTL_SECONDS = 3


async def test_an_extended_hold_keeps_its_reserved_ttl(
        quota_stub: quota_pb2_grpc.QuotaServiceStub, alice: LoggedIn) -> None:
    held = await quota_stub.ReserveTokens(quota_pb2.ReserveTokensRequest(
        user_id=alice.user_id, tokens=100, ttl=duration_pb2.Duration(seconds=TTL_SECONDS)),
        metadata=SERVICE_METADATA)
    reserved_for = held.reservation.expire_time.ToDatetime().timestamp() - time.time()
    assert reserved_for <= TTL_SECONDS + 1

    grown = await quota_stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
        reservation_id=held.reservation.reservation_id, additional_tokens=64,
        delivered_tokens=50), metadata=SERVICE_METADATA)
    try:
        extended_for = grown.reservation.expire_time.ToDatetime().timestamp() - time.time()
        assert extended_for <= TTL_SECONDS + 1, f"the hold now lives {extended_for:.0f} s"
    finally:
        await quota_stub.ReleaseReservation(quota_pb2.ReleaseReservationRequest(
            reservation_id=held.reservation.reservation_id), metadata=SERVICE_METADATA)
