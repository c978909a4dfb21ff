"""The quota protocol against auth's internal QuotaService: hold the worst case
before generating, grow the hold when a stream outgrows it, then charge the real
usage (settle) or free the hold (release).

Settling and releasing run detached from the caller's RPC, with their own
deadline: they must happen even when the caller cancelled or its deadline passed.
Both are idempotent in auth, so a transient failure (auth or its Redis unavailable,
a deadline passed, a broken connection) is retried with backoff until the call
lands or the hold's expiry passes; a definitive answer (NOT_FOUND, INVALID_ARGUMENT,
FAILED_PRECONDITION...) is never retried. Each extension also reports what was
delivered so far: a hold whose settlement never lands expires in auth charged
that checkpoint (never leaked, never more than delivered).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from llmmesh.auth.v1 import quota_pb2, quota_pb2_grpc

from services.runtime import tracing
from services.runtime.authn import SERVICE_TOKEN_HEADER
from services.runtime.context import remaining_deadline, request_id_var, servicer_context_var
from services.runtime.errors import LlmmeshError, Unavailable, from_status
from services.runtime.interceptor import REQUEST_ID_HEADER
from services.runtime.rpc_errors import PEER_RETRY_SECONDS, from_peer, peer_status

log = logging.getLogger("llmmesh.chat.quota")

SETTLE_TIMEOUT_SECONDS = 5.0  # per try
SETTLE_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)  # then the last, again and again
DRAIN_TIMEOUT_SECONDS = 10.0  # at shutdown; what is still pending then is checkpointed
# How long after a hold's expiry a settlement is still retried (auth accepts it late).
LATE_SETTLE_SECONDS = 900.0
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def settle_backoff(attempt: int) -> float:
    """The pause after failed try number `attempt` (0-based)."""
    return SETTLE_BACKOFF_SECONDS[min(attempt, len(SETTLE_BACKOFF_SECONDS) - 1)]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


@dataclass
class Hold:
    """A live reservation."""

    reservation_id: str
    tokens: int
    expire_time: float = 0.0  # when auth lets it lapse, Unix seconds (0: unknown)


def quota_unavailable(code: grpc.StatusCode) -> Unavailable:
    """The error a turn fails with when auth could not answer a quota call."""
    return Unavailable("quota service is unavailable; retry later", reason="QUOTA_UNAVAILABLE",
                       retry_after_seconds=PEER_RETRY_SECONDS,
                       metadata={"peer": "quota", "peer_code": code.name})


class QuotaClient:
    """Reserve / extend / settle / release through one long-lived channel to auth.

    The channel is a plain one (no client interceptors: they cost more than the rest
    of a call here); each call carries the service credential and the request id
    itself. Reserve and extend run within the caller's deadline.
    """

    def __init__(self, channel: grpc.aio.Channel, ttl_seconds: int, *,
                 service_token: str = "", timeout: float = SETTLE_TIMEOUT_SECONDS,
                 backoff: Callable[[int], float] = settle_backoff,
                 clock: Callable[[], float] = time.time) -> None:
        self._stub = quota_pb2_grpc.QuotaServiceStub(channel)
        self._service_token = service_token
        self._timeout = timeout
        self._ttl_seconds = ttl_seconds
        self._ttl = duration_pb2.Duration(seconds=ttl_seconds)
        self._backoff = backoff
        self._clock = clock
        self._detached: set[asyncio.Task[None]] = set()
        self._open: set[str] = set()  # holds granted and not yet settled or released
        self._none_open = asyncio.Event()

    async def reserve(self, user_id: str, tokens: int, into: Hold | None = None, *,
                      model: str = "") -> Hold:
        """Hold `tokens` for `model`; ResourceExhausted (with QuotaFailure) when they do
        not fit the user's or their team's budget, PermissionDenied (MODEL_NOT_ALLOWED)
        when the team does not allow the model. The granted hold fills `into` when
        given (and is returned)."""
        try:
            answer = await self._stub.ReserveTokens(quota_pb2.ReserveTokensRequest(
                user_id=user_id, tokens=tokens, ttl=self._ttl, model=model),
                **self._call_options())
        except grpc.aio.AioRpcError as error:
            raise _refusal(error) from None
        self._open.add(answer.reservation.reservation_id)
        self._none_open.clear()
        hold = into or Hold("", 0)
        hold.reservation_id = answer.reservation.reservation_id
        hold.tokens = answer.reservation.tokens
        hold.expire_time = _seconds(answer.reservation.expire_time)
        return hold

    async def allowed_models(self, user_id: str) -> frozenset[str] | None:
        """The model ids the user's team allows; None when every model is allowed."""
        try:
            answer = await self._stub.GetEntitlements(quota_pb2.GetEntitlementsRequest(
                user_id=user_id), **self._call_options())
        except grpc.aio.AioRpcError as error:
            raise from_peer(error, "quota") from None
        return frozenset(answer.allowed_models) or None

    async def extend(self, hold: Hold, tokens: int, delivered_tokens: int = 0) -> bool:
        """Grow `hold` by `tokens`, checkpointing `delivered_tokens` (what settling now
        would charge) with it; False when the quota has no room for them
        (RESOURCE_EXHAUSTED). Any other failure (auth down, slow, broken) is not an
        exhausted quota: it raises Unavailable (QUOTA_UNAVAILABLE, with RetryInfo)."""
        try:
            answer = await self._stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
                reservation_id=hold.reservation_id, additional_tokens=tokens,
                delivered_tokens=delivered_tokens), **self._call_options())
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # no room: the norm
                return False
            log.warning("extending a hold failed", extra={"code": error.code().name})
            raise quota_unavailable(error.code()) from None
        hold.tokens = answer.reservation.tokens
        hold.expire_time = _seconds(answer.reservation.expire_time)
        return True

    def checkpoint(self, hold: Hold, delivered_tokens: int) -> asyncio.Task[None]:
        """Record `delivered_tokens` with the hold, growing nothing (detached, one try:
        the next checkpoint or the settlement supersedes a lost one)."""
        return self._detach(self._checkpoint(hold, delivered_tokens))

    async def _checkpoint(self, hold: Hold, delivered_tokens: int) -> None:
        try:
            answer = await self._stub.ExtendReservation(quota_pb2.ExtendReservationRequest(
                reservation_id=hold.reservation_id, additional_tokens=0,
                delivered_tokens=delivered_tokens),
                **self._call_options(SETTLE_TIMEOUT_SECONDS, detached=True))
        except grpc.aio.AioRpcError as error:
            # FAILED_PRECONDITION: settled meanwhile, which supersedes the checkpoint.
            log.debug("a quota checkpoint failed", extra={"code": error.code().name})
            return
        hold.expire_time = max(hold.expire_time, _seconds(answer.reservation.expire_time))

    def settle(self, hold: Hold, used_tokens: int) -> asyncio.Task[None]:
        """Charge `used_tokens` and end the hold (detached; the task is returned)."""
        self._close(hold)
        request = quota_pb2.SettleReservationRequest(reservation_id=hold.reservation_id,
                                                     used_tokens=used_tokens)
        return self._detach(self._call(self._stub.SettleReservation, request, "settle",
                                       self._deadline(hold)))

    def release(self, hold: Hold) -> asyncio.Task[None]:
        """End the hold without charging (detached)."""
        self._close(hold)
        request = quota_pb2.ReleaseReservationRequest(reservation_id=hold.reservation_id)
        return self._detach(self._call(self._stub.ReleaseReservation, request, "release",
                                       self._deadline(hold)))

    async def drain(self) -> None:
        """At shutdown, after the server stopped: wait until the turns still ending
        (cancelled at the grace period, they settle as they unwind) have settled or
        released their holds, then for those calls to land; at most
        DRAIN_TIMEOUT_SECONDS in all."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        if self._open:
            waiter = asyncio.ensure_future(self._none_open.wait())
            await asyncio.wait({waiter}, timeout=DRAIN_TIMEOUT_SECONDS)
            waiter.cancel()
        if self._open:
            log.warning("holds still open at shutdown; they expire charged their "
                        "checkpoints", extra={"open": len(self._open)})
        if self._detached:
            _, pending = await asyncio.wait(
                list(self._detached), timeout=max(deadline - time.monotonic(), 0.1))
            if pending:
                log.warning("quota settlements still pending at shutdown; their holds "
                            "will expire charged their checkpoints",
                            extra={"pending": len(pending)})

    def _call_options(self, timeout: float | None = None, *,
                      detached: bool = False) -> dict[str, Any]:
        """A call's timeout (within the caller's deadline unless detached) and metadata:
        the service credential and the request id."""
        timeout = self._timeout if timeout is None else timeout
        if not detached:
            remaining = remaining_deadline()
            if remaining is not None:
                timeout = min(timeout, remaining)
        request_id = request_id_var.get()
        metadata = [(REQUEST_ID_HEADER, request_id)] if request_id else []
        if self._service_token:
            metadata.append((SERVICE_TOKEN_HEADER, self._service_token))
        tracing.inject_into(metadata)  # the trace goes on in auth (no client span here)
        return {"timeout": timeout, "metadata": metadata}

    def _close(self, hold: Hold) -> None:
        self._open.discard(hold.reservation_id)
        if not self._open:
            self._none_open.set()

    def _deadline(self, hold: Hold) -> float:
        # Past the hold's expiry a settle still lands: auth then replaces the checkpoint
        # charge with the real usage (and a release takes it back), so keep trying a while.
        return (hold.expire_time or self._clock() + self._ttl_seconds) + LATE_SETTLE_SECONDS

    def _detach(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # A fresh deadline: the caller's RPC may already be cancelled or out of time.
        context = contextvars.copy_context()
        context.run(servicer_context_var.set, None)
        task = asyncio.get_running_loop().create_task(call, context=context)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
                    request: RequestT, what: str, deadline: float) -> None:
        """Try until the call lands, a definitive answer comes, or `deadline` passes."""
        attempt = 0
        options = self._call_options(SETTLE_TIMEOUT_SECONDS, detached=True)
        while True:
            try:
                await method(request, **options)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in _TRANSIENT:
                    log.warning("quota %s refused; not retried", what, extra={
                        "code": error.code().name, "request": str(request).strip()})
                    return
                failure = error.code().name
            except OSError as error:  # a broken connection below gRPC
                failure = type(error).__name__
            except grpc.aio.UsageError:  # the channel was closed: shutting down
                log.warning("quota %s abandoned at shutdown; the hold expires charged its "
                            "checkpoint", what, extra={"request": str(request).strip()})
                return
            delay = self._backoff(attempt)
            attempt += 1
            if self._clock() + delay >= deadline:
                log.warning("quota %s failed until the hold's expiry; it expires charged "
                            "its checkpoint", what, extra={
                                "code": failure, "attempts": attempt,
                                "request": str(request).strip()})
                return
            log.info("quota %s failed; retrying", what,
                     extra={"code": failure, "attempt": attempt})
            await asyncio.sleep(delay)


def _refusal(error: grpc.aio.AioRpcError) -> LlmmeshError:
    """A refused reserve as the turn's error: a model the team does not allow stays
    PERMISSION_DENIED (the peer's status as it stated it); the rest as from_peer."""
    if error.code() == grpc.StatusCode.PERMISSION_DENIED:
        status = peer_status(error)
        if status is not None:
            return from_status(status)
    return from_peer(error, "quota")


def _seconds(timestamp: timestamp_pb2.Timestamp) -> float:
    """A protobuf Timestamp as Unix seconds."""
    return timestamp.seconds + timestamp.nanos / 1e9
