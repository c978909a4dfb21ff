"""External OIDC tokens directly on the services: accepted from the configured stand-in
(RS256 and ES256), one local user per (issuer, subject) even under concurrent first
uses, no password login for it, and forged / foreign / wrong-audience / expired tokens
refused with UNAUTHENTICATED and a reason."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from llmmesh.auth.v1 import auth_pb2
from llmmesh.chat.v1 import chat_pb2

from tests.helpers import error_info
from tests.identity.conftest import bearer
from tests.identity.idp import IdentityProvider

ME = auth_pb2.GetUserRequest(name="users/me")


async def test_a_token_from_the_provider_is_a_local_user(users, chat,
                                                         idp: IdentityProvider) -> None:
    subject = uuid.uuid4().hex
    rs = idp.token(subject, preferred_username="ada.l", email=f"{subject}@example.org",
                   groups=["engineering"])
    me = await users.GetUser(ME, metadata=bearer(rs))
    assert me.username.startswith("ada.l") and me.email == f"{subject}@example.org"
    es = idp.token(subject, algorithm="ES256", preferred_username="someone-else")
    assert (await users.GetUser(ME, metadata=bearer(es))).name == me.name
    await chat.ListConversations(chat_pb2.ListConversationsRequest(), metadata=bearer(es))
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # no password works for it
        await users.Login(auth_pb2.LoginRequest(username=me.username,
                                                password="llmmesh-timing-equaliser"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_first_uses_create_one_user(users, idp: IdentityProvider) -> None:
    subject = uuid.uuid4().hex
    tokens = [idp.token(subject, preferred_username="grace") for _ in range(10)]
    answers = await asyncio.gather(*(users.GetUser(ME, metadata=bearer(token))
                                     for token in tokens))
    assert len({answer.name for answer in answers}) == 1


async def test_bad_tokens_are_refused(users, chat, idp: IdentityProvider) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = uuid.uuid4().hex
    cases = {
        "forged": (idp.token(subject, signing_key=stranger), "INVALID_TOKEN"),
        "foreign issuer": (idp.token(subject, issuer="https://evil.example.com"),
                           "UNTRUSTED_ISSUER"),
        "wrong audience": (idp.token(subject, audience="someone-else"), "WRONG_AUDIENCE"),
        "expired": (idp.token(subject, lifetime=-120), "TOKEN_EXPIRED"),
    }
    for what, (token, reason) in cases.items():
        for call in (users.GetUser(ME, metadata=bearer(token)),
                     chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                            metadata=bearer(token))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
            assert error_info(caught.value).reason == reason, what


async def test_groups_map_to_teams(redis_server, users, idp: IdentityProvider) -> None:
    """The provider's groups put a new user in the mapped team (auth's own objects over
    the real Redis, with the issuer's mapping naming a team made for the test)."""
    from services.auth.oidc import OidcProviders, TeamGroupSync
    from services.auth.passwords import PasswordHasher
    from services.auth.teams import TeamStore
    from services.runtime.identity_providers import OidcIssuer
    from services.runtime.redis_client import redis_client
    from tests.helpers import register_and_login

    redis = redis_client(redis_server.url)
    passwords = PasswordHasher(4)
    try:
        teams = TeamStore(redis)
        team_owner = await register_and_login(users)
        team = await teams.create(team_owner.user_id, "Research", 0, ())
        issuer = OidcIssuer.model_validate(
            {**idp.config(), "group_teams": {"research": team.id}})
        providers = OidcProviders([issuer], redis, passwords,
                                  group_sync=TeamGroupSync(teams))
        identity = await providers.verify(idp.token(uuid.uuid4().hex,
                                                    groups=["staff", "research"]))
        assert identity.groups == ("staff", "research")
        assert await teams.team_of(identity.user_id) == team.id
    finally:
        passwords.close()
        await redis.aclose()
