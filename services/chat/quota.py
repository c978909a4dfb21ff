"""The quota protocol against auth's internal QuotaService: hold the worst case
before generating, grow the hold when a stream outgrows it, then charge the real
usage (settle) or free the hold (release).

Settling and releasing run detached from the caller's RPC, with their own
deadline: they must happen even when the caller cancelled or its deadline passed.
A hold whose settlement still fails expires in auth (never leaked).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from llmmesh.auth.v1 import quota_pb2, quota_pb2_grpc

from services.runtime.context import servicer_context_var
from services.runtime.errors import Unavailable
from services.runtime.rpc_errors import PEER_RETRY_SECONDS, from_peer

log = logging.getLogger("llmmesh.chat.quota")

SETTLE_TIMEOUT_SECONDS = 5.0

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


@dataclass
class Hold:
    """A live reservation."""

    reservation_id: str
    tokens: int


def quota_unavailable(code: grpc.StatusCode) -> Unavailable:
    """The error a turn fails with when auth could not answer a quota call."""
    return Unavailable("quota service is unavailable; retry later", reason="QUOTA_UNAVAILABLE",
                       retry_after_seconds=PEER_RETRY_SECONDS,
                       metadata={"peer": "quota", "peer_code": code.name})


class QuotaClient:
    """Reserve / extend / settle / release through one long-lived peer channel."""

    def __init__(self, channel: grpc.aio.Channel, ttl_seconds: int) -> None:
        self._stub = quota_pb2_grpc.QuotaServiceStub(channel)
        self._ttl = duration_pb2.Duration(seconds=ttl_seconds)
        self._detached: set[asyncio.Task[None]] = set()

    async def reserve(self, user_id: str, tokens: int) -> Hold:
        """Hold `tokens`; ResourceExhausted (with QuotaFailure) when they do not fit."""
        try:
            answer = await self._stub.ReserveTokens(quota_pb2.ReserveTokensRequest(
                user_id=user_id, tokens=tokens, ttl=self._ttl))
        except grpc.aio.AioRpcError as error:
            raise from_peer(error, "quota") from None
        return Hold(answer.reservation.reservation_id, answer.reservation.tokens)

    async def extend(self, hold: Hold, tokens: int) -> bool:
        """Grow `hold` by `tokens`; False when the quota has no room for them
        (RESOURCE_EXHAUSTED). Any other failure (auth down, slow, broken) is not an
        exhausted quota: it raises Unavailable (QUOTA_UNAVAILABLE, with RetryInfo)."""
        try:
            answer = await self._stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
                reservation_id=hold.reservation_id, additional_tokens=tokens))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # no room: the norm
                return False
            log.warning("extending a hold failed", extra={"code": error.code().name})
            raise quota_unavailable(error.code()) from None
        hold.tokens = answer.reservation.tokens
        return True

    def settle(self, hold: Hold, used_tokens: int) -> asyncio.Task[None]:
        """Charge `used_tokens` and end the hold (detached; the task is returned)."""
        request = quota_pb2.SettleReservationRequest(reservation_id=hold.reservation_id,
                                                     used_tokens=used_tokens)
        return self._detach(self._call(self._stub.SettleReservation, request, "settle"))

    def release(self, hold: Hold) -> asyncio.Task[None]:
        """End the hold without charging (detached)."""
        request = quota_pb2.ReleaseReservationRequest(reservation_id=hold.reservation_id)
        return self._detach(self._call(self._stub.ReleaseReservation, request, "release"))

    async def drain(self) -> None:
        """Wait for detached settlements (at shutdown)."""
        if self._detached:
            await asyncio.wait(list(self._detached), timeout=SETTLE_TIMEOUT_SECONDS)

    def _detach(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh deadline: the caller's RPC may already be cancelled or out of time.
        context = contextvars.copy_context()
        context.run(servicer_context_var.set, None)
        task = asyncio.get_running_loop().create_task(call, context=context)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
                    request: RequestT, what: str) -> None:
        try:
            await method(request, timeout=SETTLE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.warning("quota %s failed; the hold will expire", what,
                        extra={"code": error.code().name, "request": str(request).strip()})
