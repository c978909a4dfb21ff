"""gRPC transport of ApiKeyService, with the request checks (field violations)."""

from __future__ import annotations

import re
import time

import grpc
from llmmesh.auth.v1 import api_keys_pb2, api_keys_pb2_grpc

from services.auth.api_keys import ApiKeyRecord, ApiKeyStore
from services.runtime.context import current_user
from services.runtime.errors import FieldViolation, InvalidArgument, NotFound, check_fields
from services.runtime.paging import decode_offset, encode_page_token, page_size
from services.runtime.scopes import SCOPES, unknown_scopes
from services.runtime.timestamps import timestamp_from_seconds

_PARENT = re.compile(r"^users/([^/]+)$")
_NAME = re.compile(r"^users/([^/]+)/apiKeys/([^/]+)$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
DISPLAY_NAME_MAX = 64
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 10 * 365 * 86400
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_SCOPES = len(SCOPES)

_State = api_keys_pb2.ApiKey.State


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):
    """Create, get, list and revoke the caller's API keys."""

    def __init__(self, keys: ApiKeyStore) -> None:
        self._keys = keys

    async def CreateApiKey(
            self, request: api_keys_pb2.CreateApiKeyRequest,
            context: grpc.aio.ServicerContext[api_keys_pb2.CreateApiKeyRequest,
                                              api_keys_pb2.CreateApiKeyResponse],
    ) -> api_keys_pb2.CreateApiKeyResponse:
        user_id = _owner(request.parent, "parent")
        wanted = request.api_key
        now = time.time()
        expire_time, violation = _expiry(wanted, now)
        scopes = list(dict.fromkeys(wanted.scopes))
        check_fields([
            _display_name(wanted.display_name),
            *(FieldViolation(f"api_key.scopes[{list(wanted.scopes).index(scope)}]",
                             f"unknown scope {scope!r}; known: {', '.join(sorted(SCOPES))}")
              for scope in unknown_scopes(scopes)),
            violation,
        ])
        record, secret = await self._keys.create(user_id, wanted.display_name, scopes,
                                                 expire_time)
        return api_keys_pb2.CreateApiKeyResponse(api_key=_message(record, now), secret=secret)

    async def GetApiKey(
            self, request: api_keys_pb2.GetApiKeyRequest,
            context: grpc.aio.ServicerContext[api_keys_pb2.GetApiKeyRequest,
                                              api_keys_pb2.ApiKey],
    ) -> api_keys_pb2.ApiKey:
        user_id, key_id = _key_name(request.name)
        record = await self._keys.get(user_id, key_id)
        if record is None:
            raise NotFound("api key", request.name)
        return _message(record, time.time())

    async def ListApiKeys(
            self, request: api_keys_pb2.ListApiKeysRequest,
            context: grpc.aio.ServicerContext[api_keys_pb2.ListApiKeysRequest,
                                              api_keys_pb2.ListApiKeysResponse],
    ) -> api_keys_pb2.ListApiKeysResponse:
        user_id = _owner(request.parent, "parent")
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        scope = f"apikeys:{user_id}"
        offset = decode_offset(request.page_token, scope)
        records, more = await self._keys.list(user_id, offset, size)
        now = time.time()
        return api_keys_pb2.ListApiKeysResponse(
            api_keys=[_message(record, now) for record in records],
            next_page_token=encode_page_token(scope, o=offset + size) if more else "")

    async def RevokeApiKey(
            self, request: api_keys_pb2.RevokeApiKeyRequest,
            context: grpc.aio.ServicerContext[api_keys_pb2.RevokeApiKeyRequest,
                                              api_keys_pb2.ApiKey],
    ) -> api_keys_pb2.ApiKey:
        user_id, key_id = _key_name(request.name)
        record = await self._keys.revoke(user_id, key_id)
        if record is None:
            raise NotFound("api key", request.name)
        return _message(record, time.time())


def _owner(parent: str, field: str) -> str:
    match = _PARENT.match(parent)
    if match is None:
        raise InvalidArgument([FieldViolation(field, "must be users/me or users/{user}")])
    caller = current_user().subject
    if match.group(1) not in {"me", caller}:
        raise NotFound("user", parent)
    return caller


def _key_name(name: str) -> tuple[str, str]:
    match = _NAME.match(name)
    if match is None or not _KEY_ID.match(match.group(2)):
        raise InvalidArgument([FieldViolation(
            "name", "must be users/{user}/apiKeys/{api_key}, e.g. users/me/apiKeys/"
                    "0123456789abcdef")])
    caller = current_user().subject
    if match.group(1) not in {"me", caller}:
        raise NotFound("api key", name)
    return caller, match.group(2)


def _display_name(value: str) -> FieldViolation | None:
    if not value.strip():
        return FieldViolation("api_key.display_name", "is required")
    if len(value) > DISPLAY_NAME_MAX or not value.isprintable():
        return FieldViolation("api_key.display_name",
                              f"must be at most {DISPLAY_NAME_MAX} printable characters")
    return None


def _expiry(wanted: api_keys_pb2.ApiKey, now: float) -> tuple[float | None, FieldViolation | None]:
    which = wanted.WhichOneof("expiration")
    if which == "ttl":
        seconds = wanted.ttl.ToTimedelta().total_seconds()
        if not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:
            return None, FieldViolation("api_key.ttl", f"must be between {MIN_TTL_SECONDS} s "
                                                       "and 10 years")
        return now + seconds, None
    if which == "expire_time":
        when = wanted.expire_time.ToNanoseconds() / 1e9
        if not now < when <= now + MAX_TTL_SECONDS:
            return None, FieldViolation("api_key.expire_time",
                                        "must be in the future, at most 10 years ahead")
        return when, None
    return None, None


def _message(record: ApiKeyRecord, now: float) -> api_keys_pb2.ApiKey:
    state = (_State.STATE_REVOKED if record.revoke_time is not None
             else _State.STATE_EXPIRED if record.expired(now) else _State.STATE_ACTIVE)
    key = api_keys_pb2.ApiKey(
        name=f"users/{record.user_id}/apiKeys/{record.id}", display_name=record.display_name,
        key_prefix=record.visible_prefix, scopes=list(record.scopes), state=state,
        create_time=timestamp_from_seconds(record.create_time))
    if record.expire_time is not None:
        key.expire_time.CopyFrom(timestamp_from_seconds(record.expire_time))
    if record.last_use_time is not None:
        key.last_use_time.CopyFrom(timestamp_from_seconds(record.last_use_time))
    if record.revoke_time is not None:
        key.revoke_time.CopyFrom(timestamp_from_seconds(record.revoke_time))
    return key
