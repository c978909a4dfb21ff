"""gRPC transport for auth: unpack requests, call the domain, pack responses."""

from __future__ import annotations

import re

import grpc
from google.api import httpbody_pb2
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc, quota_pb2, quota_pb2_grpc

from services.auth.accounts import Accounts, Session
from services.auth.quota import MONTH_PATTERN, Hold, QuotaLedger, QuotaSnapshot, current_month
from services.auth.users import UserRecord
from services.runtime.context import current_user
from services.runtime.errors import FieldViolation, InvalidArgument, NotFound, check_fields
from services.runtime.timestamps import timestamp_from_millis, timestamp_from_seconds

_USER_NAME = re.compile(r"^users/([^/]+)$")
_USAGE_NAME = re.compile(r"^users/([^/]+)/usages/([^/]+)$")
_USER_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_TOKENS_PER_CALL = 10_000_000


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """The public auth API."""

    def __init__(self, accounts: Accounts, ledger: QuotaLedger, jwks: bytes) -> None:
        self._accounts = accounts
        self._ledger = ledger
        self._jwks = jwks

    async def CreateUser(
            self, request: auth_pb2.CreateUserRequest,
            context: grpc.aio.ServicerContext[auth_pb2.CreateUserRequest, auth_pb2.User],
    ) -> auth_pb2.User:
        record = await self._accounts.register(request.user.username, request.user.email,
                                               request.password)
        return await self._user(record)

    async def Login(
            self, request: auth_pb2.LoginRequest,
            context: grpc.aio.ServicerContext[auth_pb2.LoginRequest, auth_pb2.LoginResponse],
    ) -> auth_pb2.LoginResponse:
        session = await self._accounts.login(request.username, request.password)
        return auth_pb2.LoginResponse(tokens=_tokens(session), user=await self._user(session.user))

    async def RefreshToken(
            self, request: auth_pb2.RefreshTokenRequest,
            context: grpc.aio.ServicerContext[auth_pb2.RefreshTokenRequest,
                                              auth_pb2.RefreshTokenResponse],
    ) -> auth_pb2.RefreshTokenResponse:
        session = await self._accounts.refresh(request.refresh_token)
        return auth_pb2.RefreshTokenResponse(tokens=_tokens(session))

    async def Logout(
            self, request: auth_pb2.LogoutRequest,
            context: grpc.aio.ServicerContext[auth_pb2.LogoutRequest, auth_pb2.LogoutResponse],
    ) -> auth_pb2.LogoutResponse:
        await self._accounts.logout(current_user().subject, request.refresh_token)
        return auth_pb2.LogoutResponse()

    async def GetUser(
            self, request: auth_pb2.GetUserRequest,
            context: grpc.aio.ServicerContext[auth_pb2.GetUserRequest, auth_pb2.User],
    ) -> auth_pb2.User:
        match = _USER_NAME.match(request.name)
        if match is None:
            raise InvalidArgument([FieldViolation("name", "must be users/me or users/{user}")])
        user_id = _own_user_id(match.group(1), request.name)
        record = await self._accounts.user(user_id)
        if record is None:
            raise NotFound("user", request.name)
        return await self._user(record)

    async def GetUsage(
            self, request: auth_pb2.GetUsageRequest,
            context: grpc.aio.ServicerContext[auth_pb2.GetUsageRequest, auth_pb2.Usage],
    ) -> auth_pb2.Usage:
        match = _USAGE_NAME.match(request.name)
        if match is None:
            raise InvalidArgument([FieldViolation(
                "name", "must be users/{user}/usages/{month}, e.g. users/me/usages/current")])
        user_id = _own_user_id(match.group(1), request.name)
        month = current_month() if match.group(2) == "current" else match.group(2)
        if not MONTH_PATTERN.match(month):
            raise InvalidArgument([FieldViolation("name", "month must be YYYY-MM or current")])
        snapshot = await self._ledger.snapshot(user_id, month)
        return auth_pb2.Usage(
            name=f"users/{user_id}/usages/{month}", month=month, tokens_used=snapshot.used,
            tokens_reserved=snapshot.reserved, token_limit=snapshot.limit,
            tokens_remaining=snapshot.remaining)

    async def GetJwks(
            self, request: auth_pb2.GetJwksRequest,
            context: grpc.aio.ServicerContext[auth_pb2.GetJwksRequest, httpbody_pb2.HttpBody],
    ) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/json", data=self._jwks)

    async def _user(self, record: UserRecord) -> auth_pb2.User:
        limit = await self._ledger.limit(record.id)
        return auth_pb2.User(name=f"users/{record.id}", username=record.username,
                             email=record.email,
                             create_time=timestamp_from_seconds(record.create_time),
                             monthly_token_limit=limit)


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """The internal quota API (service credential required, see server.py)."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self._ledger = ledger

    async def ReserveTokens(
            self, request: quota_pb2.ReserveTokensRequest,
            context: grpc.aio.ServicerContext[quota_pb2.ReserveTokensRequest,
                                              quota_pb2.ReserveTokensResponse],
    ) -> quota_pb2.ReserveTokensResponse:
        check_fields([_user_id_violation(request.user_id, "user_id"),
                _tokens_violation(request.tokens, "tokens", minimum=1)])
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else None
        if ttl is not None and ttl <= 0:
            raise InvalidArgument([FieldViolation("ttl", "must be positive")])
        hold, snapshot = await self._ledger.reserve(request.user_id, request.tokens, ttl)
        return quota_pb2.ReserveTokensResponse(reservation=_reservation(hold),
                                               state=_state(snapshot))

    async def ExtendReservation(
            self, request: quota_pb2.ExtendReservationRequest,
            context: grpc.aio.ServicerContext[quota_pb2.ExtendReservationRequest,
                                              quota_pb2.ExtendReservationResponse],
    ) -> quota_pb2.ExtendReservationResponse:
        check_fields([_required(request.reservation_id, "reservation_id"),
                _tokens_violation(request.additional_tokens, "additional_tokens", minimum=0),
                _tokens_violation(request.delivered_tokens, "delivered_tokens", minimum=0)])
        hold, snapshot = await self._ledger.extend(request.reservation_id,
                                                   request.additional_tokens,
                                                   request.delivered_tokens)
        return quota_pb2.ExtendReservationResponse(reservation=_reservation(hold),
                                                   state=_state(snapshot))

    async def SettleReservation(
            self, request: quota_pb2.SettleReservationRequest,
            context: grpc.aio.ServicerContext[quota_pb2.SettleReservationRequest,
                                              quota_pb2.SettleReservationResponse],
    ) -> quota_pb2.SettleReservationResponse:
        check_fields([_required(request.reservation_id, "reservation_id"),
                _tokens_violation(request.used_tokens, "used_tokens", minimum=0)])
        charged, snapshot = await self._ledger.settle(request.reservation_id,
                                                      request.used_tokens)
        return quota_pb2.SettleReservationResponse(charged_tokens=charged,
                                                   state=_state(snapshot))

    async def ReleaseReservation(
            self, request: quota_pb2.ReleaseReservationRequest,
            context: grpc.aio.ServicerContext[quota_pb2.ReleaseReservationRequest,
                                              quota_pb2.ReleaseReservationResponse],
    ) -> quota_pb2.ReleaseReservationResponse:
        check_fields([_required(request.reservation_id, "reservation_id")])
        snapshot = await self._ledger.release(request.reservation_id)
        return quota_pb2.ReleaseReservationResponse(state=_state(snapshot))

    async def SetTokenLimit(
            self, request: quota_pb2.SetTokenLimitRequest,
            context: grpc.aio.ServicerContext[quota_pb2.SetTokenLimitRequest,
                                              quota_pb2.SetTokenLimitResponse],
    ) -> quota_pb2.SetTokenLimitResponse:
        check_fields([_user_id_violation(request.user_id, "user_id"),
                _tokens_violation(request.monthly_token_limit, "monthly_token_limit",
                                  minimum=0, maximum=10**12)])
        limit = await self._ledger.set_limit(request.user_id, request.monthly_token_limit)
        return quota_pb2.SetTokenLimitResponse(monthly_token_limit=limit)


def _own_user_id(segment: str, name: str) -> str:
    """The caller's id for `me` or their own id; anyone else's answers NOT_FOUND."""
    caller = current_user().subject
    if segment in {"me", caller}:
        return caller
    raise NotFound("user", name)


def _tokens(session: Session) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=session.access.token, token_type="Bearer",  # noqa: S106
        access_token_expire_time=timestamp_from_seconds(session.access.expire_time),
        refresh_token=session.refresh.token,
        refresh_token_expire_time=timestamp_from_seconds(session.refresh.expire_time))


def _reservation(hold: Hold) -> quota_pb2.Reservation:
    return quota_pb2.Reservation(reservation_id=hold.reservation_id, user_id=hold.user_id,
                                 month=hold.month, tokens=hold.tokens,
                                 expire_time=timestamp_from_millis(hold.expire_time_ms))


def _state(snapshot: QuotaSnapshot) -> quota_pb2.QuotaState:
    return quota_pb2.QuotaState(tokens_used=snapshot.used, tokens_reserved=snapshot.reserved,
                                token_limit=snapshot.limit)


def _required(value: str, field: str) -> FieldViolation | None:
    return FieldViolation(field, "is required") if not value else None


def _user_id_violation(value: str, field: str) -> FieldViolation | None:
    if not _USER_ID.match(value):
        return FieldViolation(field, "must be a user id (32 hex characters)")
    return None


def _tokens_violation(value: int, field: str, *, minimum: int,
                      maximum: int = MAX_TOKENS_PER_CALL) -> FieldViolation | None:
    if not minimum <= value <= maximum:
        return FieldViolation(field, f"must be between {minimum} and {maximum}")
    return None
