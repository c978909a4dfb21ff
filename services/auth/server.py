"""Builds the auth server: domain objects over Redis, servicers, access policy."""

from __future__ import annotations

import json

import grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc, quota_pb2, quota_pb2_grpc

from services.auth.access_tokens import AccessTokenIssuer
from services.auth.accounts import Accounts
from services.auth.config import AuthConfig
from services.auth.keys import jwks_document, load_or_create
from services.auth.passwords import PasswordHasher
from services.auth.quota import QuotaLedger
from services.auth.refresh_tokens import RefreshTokenStore
from services.auth.servicer import AuthServicer, QuotaServicer
from services.auth.users import UserStore
from services.runtime.authn import AccessPolicy, service_methods
from services.runtime.redis_client import redis_client
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service

AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name

POLICY = AccessPolicy.build(
    public=service_methods(AUTH_SERVICE, ["CreateUser", "Login", "RefreshToken", "GetJwks"]),
    internal=service_methods(
        QUOTA_SERVICE,
        quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].methods_by_name.keys()),
)


def create_server(config: AuthConfig) -> MeshServer:
    """The auth server, unstarted (`await server.start()` returns the bound port)."""
    runtime = config.runtime
    redis = redis_client(runtime.redis_url, socket_timeout=runtime.redis_timeout_seconds)
    pem = config.signing_key_pem
    key = load_or_create(pem.get_secret_value() if pem else None, runtime.data_dir)
    jwks = jwks_document([key])
    passwords = PasswordHasher(config.bcrypt_cost)
    accounts = Accounts(
        users=UserStore(redis),
        passwords=passwords,
        access_tokens=AccessTokenIssuer(key, issuer=runtime.jwt_issuer,
                                        audience=runtime.jwt_audience,
                                        ttl_seconds=config.access_token_ttl_seconds),
        refresh_tokens=RefreshTokenStore(redis, config.refresh_token_ttl_seconds),
    )
    ledger = QuotaLedger(redis, config.default_monthly_token_limit,
                         config.reservation_ttl_seconds)

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(accounts, ledger, jwks), server)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(ledger), server)

    async def close() -> None:
        passwords.close()
        await redis.aclose()

    async def own_jwks() -> dict[str, object]:
        document: dict[str, object] = json.loads(jwks)
        return document

    spec = ServiceSpec(names=[AUTH_SERVICE, QUOTA_SERVICE], register=register, policy=POLICY,
                       on_stop=[close])
    return MeshServer(runtime, spec, build_verifier(runtime, own_jwks))


def main() -> None:
    """The auth service: `python -m services.auth`."""
    run_service(AuthConfig.from_env, create_server)
