"""The JWKS cache: refetches on an unknown kid (key rotation), but not on every
forged kid."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from services.auth.access_tokens import AccessTokenIssuer
from services.auth.keys import SigningKey, jwks_document
from services.runtime.errors import Unauthenticated
from services.runtime.jwt_verify import JwksCache, JwtVerifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Publisher:
    """Stands in for auth's GetJwks: serves whatever keys are published now."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0

    async def __call__(self) -> dict[str, object]:
        self.fetches += 1
        return json.loads(jwks_document(self.keys))


def _token(key: SigningKey) -> str:
    issuer = AccessTokenIssuer(key, issuer="iss", audience="aud", ttl_seconds=60)
    return issuer.issue("u" * 32, "someone").token


async def test_rotation_is_picked_up_by_refetching_on_an_unknown_kid() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    publisher, clock = Publisher(old), FakeClock()
    verifier = JwtVerifier(JwksCache(publisher, ttl=300, refetch_interval=1.0, clock=clock),
                           issuer="iss", audience="aud")
    assert (await verifier.verify(_token(old))).subject == "u" * 32
    assert publisher.fetches == 1
    publisher.keys = [old, new]  # auth rotated
    clock.now += 2
    assert (await verifier.verify(_token(new))).username == "someone"
    assert publisher.fetches == 2
    # Verifying known kids uses the cache.
    for _ in range(10):
        await verifier.verify(_token(old))
    assert publisher.fetches == 2


async def test_forged_kids_cannot_hammer_auth() -> None:
    real, stranger = SigningKey.generate(), SigningKey.generate()
    publisher, clock = Publisher(real), FakeClock()
    verifier = JwtVerifier(JwksCache(publisher, ttl=300, refetch_interval=1.0, clock=clock),
                           issuer="iss", audience="aud")
    await verifier.verify(_token(real))
    for _ in range(50):
        with pytest.raises(Unauthenticated):
            await verifier.verify(_token(stranger))
    assert publisher.fetches == 1  # within the refetch interval: no new fetch
    clock.now += 1.5
    with pytest.raises(Unauthenticated):
        await verifier.verify(_token(stranger))
    assert publisher.fetches == 2


async def test_the_cache_expires() -> None:
    key = SigningKey.generate()
    publisher, clock = Publisher(key), FakeClock()
    verifier = JwtVerifier(JwksCache(publisher, ttl=300, clock=clock), issuer="iss",
                           audience="aud")
    await verifier.verify(_token(key))
    clock.now += 301
    await verifier.verify(_token(key))
    assert publisher.fetches == 2


async def test_clock_skew_leeway() -> None:
    key = SigningKey.generate()
    now = int(time.time())
    claims = {"iss": "iss", "aud": "aud", "sub": "s", "iat": now - 100, "exp": now - 10,
              "jti": "j"}
    token = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})
    lenient = JwtVerifier(JwksCache(Publisher(key)), issuer="iss", audience="aud",
                          leeway_seconds=30)
    strict = JwtVerifier(JwksCache(Publisher(key)), issuer="iss", audience="aud",
                         leeway_seconds=0)
    assert (await lenient.verify(token)).subject == "s"
    with pytest.raises(Unauthenticated, match="expired"):
        await strict.verify(token)


async def test_a_verified_token_is_remembered_for_at_most_a_minute() -> None:
    key = SigningKey.generate()
    publisher, keys_clock, clock = Publisher(key), FakeClock(), FakeClock()
    verifier = JwtVerifier(JwksCache(publisher, ttl=300, clock=keys_clock), issuer="iss",
                           audience="aud", clock=clock)
    token = _token(key)
    await verifier.verify(token)
    publisher.keys = []  # the key is withdrawn...
    keys_clock.now += 301  # ...and the key set refetched on the next lookup
    clock.now += 59
    assert (await verifier.verify(token)).subject == "u" * 32  # remembered: no lookup
    assert publisher.fetches == 1
    clock.now += 2  # past the minute: verified again, against the keys now published
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.verify(token)
    assert publisher.fetches == 2


async def test_a_remembered_token_is_refused_once_it_expires() -> None:
    key = SigningKey.generate()
    now = int(time.time())
    claims = {"iss": "iss", "aud": "aud", "sub": "s", "iat": now, "exp": now + 1, "jti": "j"}
    token = jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid})
    verifier = JwtVerifier(JwksCache(Publisher(key)), issuer="iss", audience="aud",
                           leeway_seconds=0)
    assert (await verifier.verify(token)).subject == "s"
    await asyncio.sleep(now + 1.1 - time.time())
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(token)
