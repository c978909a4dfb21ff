"""Where credentials are exchanged: the internal CredentialService (services call it),
and Envoy's external authorization service (`envoy.service.auth.v3.Authorization`), which
the edge calls for every request to a private route whose bearer is not one of our
access tokens (gateway/envoy_config.py).

Check answers OK with the `authorization` header replaced by the exchanged access token
(and in dynamic metadata the user, for the rate limiter's `user` descriptor, and the token
with its expiry and the credential, which the edge reuses for the same credential for a
moment), or DENIED with 401 and the reason as the body, which the edge wraps in its JSON
error shape.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from llmmesh.auth.v1 import credentials_pb2, credentials_pb2_grpc

from services.auth.exchange import CredentialExchanger
from services.runtime.authn import (
    API_KEY_HEADER,
    EXCHANGED_CREDENTIAL_KEY,
    EXCHANGED_EXPIRY_KEY,
    EXCHANGED_TOKEN_KEY,
    bearer_token,
)
from services.runtime.errors import FieldViolation, Unauthenticated, check_fields
from services.runtime.timestamps import timestamp_from_seconds

# Envoy's generated modules ship no type stubs: to mypy their messages are Any.
CheckRequest: TypeAlias = Any
CheckResponse: TypeAlias = Any

EXT_AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
# What the edge's answer says when a request carries no credential at all: the words
# Envoy's jwt_authn used before ext_authz took over the refusal.
MISSING_CREDENTIAL = "Jwt is missing"
USER_METADATA_KEY = "user"


class CredentialServicer(credentials_pb2_grpc.CredentialServiceServicer):
    """The internal exchange (service credential required, see server.py)."""

    def __init__(self, exchanger: CredentialExchanger) -> None:
        self._exchanger = exchanger

    async def ExchangeCredential(
            self, request: credentials_pb2.ExchangeCredentialRequest,
            context: grpc.aio.ServicerContext[credentials_pb2.ExchangeCredentialRequest,
                                              credentials_pb2.ExchangeCredentialResponse],
    ) -> credentials_pb2.ExchangeCredentialResponse:
        check_fields([FieldViolation("credential", "is required")
                      if not request.credential else None])
        exchanged = await self._exchanger.exchange(request.credential)
        return credentials_pb2.ExchangeCredentialResponse(
            access_token=exchanged.access_token, user_id=exchanged.user_id,
            expire_time=timestamp_from_seconds(exchanged.expire_time))


class ExtAuthzServicer:
    """Envoy's ext_authz Check over the exchanger."""

    def __init__(self, exchanger: CredentialExchanger) -> None:
        self._exchanger = exchanger

    async def Check(self, request: CheckRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> CheckResponse:
        headers = request.attributes.request.http.headers
        try:
            credential = _credential(headers)
            exchanged = await self._exchanger.exchange(credential)
        except Unauthenticated as refused:
            return _denied(refused.message)
        metadata = struct_pb2.Struct()
        metadata.update({USER_METADATA_KEY: exchanged.user_id,
                         EXCHANGED_TOKEN_KEY: exchanged.access_token,
                         EXCHANGED_EXPIRY_KEY: int(exchanged.expire_time),
                         EXCHANGED_CREDENTIAL_KEY: credential})
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="authorization",
                                                value=f"Bearer {exchanged.access_token}"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)],
                headers_to_remove=[API_KEY_HEADER]),
            dynamic_metadata=metadata)


def _credential(headers: Any) -> str:
    key = headers.get(API_KEY_HEADER, "")
    if key:
        return str(key)
    authorization = str(headers.get("authorization", ""))
    # Another scheme (Basic, Token, ...) carries no bearer token: as missing, as before.
    if not authorization.strip().lower().startswith("bearer "):
        raise Unauthenticated(MISSING_CREDENTIAL, reason="MISSING_TOKEN")
    return bearer_token(authorization)


def _denied(message: str) -> CheckResponse:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            body=message))


def add_ext_authz_servicer(servicer: ExtAuthzServicer, server: grpc.aio.Server) -> None:
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
