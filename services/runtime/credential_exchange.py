"""Auth's CredentialService as seen by the other services: an API key or an external
OIDC token in, a short-lived llmmesh access token out (services/runtime/authn.py)."""

from __future__ import annotations

import grpc
from llmmesh.auth.v1 import credentials_pb2, credentials_pb2_grpc

from services.runtime.rpc_errors import from_peer

EXCHANGE_TIMEOUT_SECONDS = 5.0
SERVICE_TOKEN_HEADER = "x-llmmesh-service-token"  # noqa: S105 — a header name


class PeerCredentialExchange:
    """Calls auth's ExchangeCredential over one long-lived channel, opened on first use
    (inside the event loop the server runs on)."""

    def __init__(self, auth_address: str, service_token: str) -> None:
        self._address = auth_address
        self._service_token = service_token
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self, credential: str) -> str:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address)
        stub = credentials_pb2_grpc.CredentialServiceStub(self._channel)
        try:
            response = await stub.ExchangeCredential(
                credentials_pb2.ExchangeCredentialRequest(credential=credential),
                metadata=((SERVICE_TOKEN_HEADER, self._service_token),),
                timeout=EXCHANGE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise from_peer(error, "auth") from None
        return response.access_token

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
