"""Fetching auth's JWKS over gRPC, for services other than auth."""

from __future__ import annotations

from typing import Any

import grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from services.runtime.errors import Unavailable
from services.runtime.jwt_verify import JwksFetcher, parse_jwks

FETCH_TIMEOUT_SECONDS = 5.0


def remote_jwks_fetcher(channel: grpc.aio.Channel) -> JwksFetcher:
    """A fetcher that asks auth's GetJwks; UNAVAILABLE when auth cannot answer."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> dict[str, Any]:
        try:
            body = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=FETCH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise Unavailable("cannot fetch signing keys from auth",
                              reason="JWKS_UNAVAILABLE", retry_after_seconds=1.0,
                              metadata={"auth_code": error.code().name}) from None
        return parse_jwks(body.data)

    return fetch
