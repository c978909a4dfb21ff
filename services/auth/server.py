"""Builds the auth server: domain objects over Redis, servicers, access policy."""

from __future__ import annotations

import json

import grpc
from llmmesh.auth.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    credentials_pb2,
    credentials_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    teams_pb2_grpc,
)

from services.auth.access_tokens import AccessTokenIssuer
from services.auth.accounts import Accounts
from services.auth.api_keys import ApiKeyStore
from services.auth.api_keys_servicer import ApiKeyServicer
from services.auth.config import AuthConfig
from services.auth.credentials_servicer import (
    EXT_AUTHZ_SERVICE,
    CredentialServicer,
    ExtAuthzServicer,
    add_ext_authz_servicer,
)
from services.auth.exchange import CredentialExchanger
from services.auth.keys import jwks_document, load_or_create
from services.auth.oidc import OidcProviders, TeamGroupSync
from services.auth.passwords import PasswordHasher
from services.auth.quota import QuotaLedger
from services.auth.refresh_tokens import RefreshTokenStore
from services.auth.servicer import AuthServicer
from services.auth.team_admin import Teams
from services.auth.team_servicer import TEAM_SERVICE, TeamQuotaServicer, TeamServicer
from services.auth.teams import TeamStore
from services.auth.users import UserStore
from services.runtime.authn import AccessPolicy, service_methods
from services.runtime.redis_client import redis_client
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service

AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
API_KEY_SERVICE = api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
CREDENTIAL_SERVICE = credentials_pb2.DESCRIPTOR.services_by_name["CredentialService"].full_name

POLICY = AccessPolicy.build(
    # Envoy's ext_authz check sends no credential of its own; it only turns a valid
    # credential into a token for the same user and scopes (never routed by the edge).
    public=[*service_methods(AUTH_SERVICE, ["CreateUser", "Login", "RefreshToken", "GetJwks"]),
            *service_methods(EXT_AUTHZ_SERVICE, ["Check"])],
    internal=[*service_methods(
        QUOTA_SERVICE,
        quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].methods_by_name.keys()),
        *service_methods(CREDENTIAL_SERVICE, ["ExchangeCredential"])],
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
    team_store = TeamStore(redis)
    api_keys = ApiKeyStore(redis)
    exchanger = CredentialExchanger(
        key, issuer=runtime.jwt_issuer, audience=runtime.jwt_audience, keys=api_keys,
        users=UserStore(redis),
        oidc=OidcProviders(config.oidc_issuers, redis, passwords,
                           leeway_seconds=runtime.jwt_leeway_seconds,
                           group_sync=TeamGroupSync(team_store)))

    async def exchange(credential: str) -> str:
        return (await exchanger.exchange(credential)).access_token

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(accounts, ledger, jwks), server)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(
            TeamQuotaServicer(ledger, team_store), server)
        teams_pb2_grpc.add_TeamServiceServicer_to_server(
            TeamServicer(Teams(team_store, UserStore(redis), ledger)), server)
        api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(api_keys), server)
        credentials_pb2_grpc.add_CredentialServiceServicer_to_server(
            CredentialServicer(exchanger), server)
        add_ext_authz_servicer(ExtAuthzServicer(exchanger), server)

    async def close() -> None:
        passwords.close()
        await redis.aclose()

    async def own_jwks() -> dict[str, object]:
        document: dict[str, object] = json.loads(jwks)
        return document

    spec = ServiceSpec(names=[AUTH_SERVICE, QUOTA_SERVICE, TEAM_SERVICE, API_KEY_SERVICE,
                              CREDENTIAL_SERVICE, EXT_AUTHZ_SERVICE], register=register,
                       policy=POLICY, on_stop=[close])
    return MeshServer(runtime, spec, build_verifier(runtime, own_jwks), exchange=exchange)


def main() -> None:
    """The auth service: `python -m services.auth`."""
    run_service(AuthConfig.from_env, create_server)
