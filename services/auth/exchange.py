"""Turns a credential that is not one of our access tokens — an API key or an external
OIDC access token — into a short-lived llmmesh access token for its local user.

The token is our ordinary ES256 JWT (`sub` = the local user) plus `scope` (the key's
scopes, space-separated; absent = all), `key` (the key's id) or `idp` (the external
issuer), so every service keeps verifying only our own tokens and enforces scopes from
them (services/runtime/scopes.py).

Results are cached per credential for `CACHE_SECONDS`, so a burst of calls with one key
costs one Redis read and one signature: a revoked key stops within that time here (the
services add at most their own short cache, services/runtime/authn.py).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from services.auth.api_keys import ApiKeyStore, is_api_key, secret_hash
from services.auth.keys import ALGORITHM, SigningKey
from services.auth.oidc import OidcProviders, unverified_issuer
from services.auth.users import UserStore
from services.runtime.errors import Unauthenticated

CACHE_SECONDS = 1.0
CACHE_SIZE = 4096
EXCHANGED_TOKEN_TTL_SECONDS = 120


@dataclass(frozen=True)
class Exchanged:
    """An access token minted for a credential."""

    access_token: str
    expire_time: float
    user_id: str


class CredentialExchanger:
    """API key or external token -> our access token (Unauthenticated when refused)."""

    def __init__(self, key: SigningKey, *, issuer: str, audience: str, keys: ApiKeyStore,
                 users: UserStore, oidc: OidcProviders) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._users = users
        self._oidc = oidc
        self._cache: OrderedDict[str, tuple[Exchanged, float]] = OrderedDict()

    async def exchange(self, credential: str) -> Exchanged:
        if not credential:
            raise Unauthenticated("missing credential", reason="MISSING_TOKEN")
        now = time.time()
        cache_key = secret_hash(credential)
        cached = self._cache.get(cache_key)
        if cached is not None and now < cached[1]:
            return cached[0]
        exchanged = await (self._api_key(credential, now) if is_api_key(credential)
                           else self._external(credential, now))
        self._cache[cache_key] = (exchanged, min(now + CACHE_SECONDS, exchanged.expire_time))
        self._cache.move_to_end(cache_key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return exchanged

    async def _api_key(self, secret: str, now: float) -> Exchanged:
        record = await self._keys.find(secret)
        if record is None:
            raise Unauthenticated("API key is not valid", reason="API_KEY_INVALID")
        if record.revoke_time is not None:
            raise Unauthenticated("API key was revoked", reason="API_KEY_REVOKED",
                                  metadata={"key_prefix": record.visible_prefix})
        if record.expired(now):
            raise Unauthenticated("API key has expired", reason="API_KEY_EXPIRED",
                                  metadata={"key_prefix": record.visible_prefix})
        user = await self._users.get(record.user_id)
        if user is None:
            raise Unauthenticated("API key is not valid", reason="API_KEY_INVALID")
        await self._keys.touch(record, now)
        expires = now + EXCHANGED_TOKEN_TTL_SECONDS
        if record.expire_time is not None:
            expires = min(expires, record.expire_time)
        claims: dict[str, object] = {"key": record.id}
        if record.scopes:
            claims["scope"] = " ".join(record.scopes)
        return self._mint(user.id, user.username, now, expires, claims)

    async def _external(self, token: str, now: float) -> Exchanged:
        issuer = unverified_issuer(token)
        if issuer is None:
            raise Unauthenticated("access token is malformed", reason="MALFORMED_TOKEN")
        if issuer == self._issuer:  # ours, refused by the verifier before coming here
            raise Unauthenticated("access token is invalid", reason="INVALID_TOKEN")
        identity = await self._oidc.verify(token)
        expires = min(now + EXCHANGED_TOKEN_TTL_SECONDS, identity.expire_time)
        return self._mint(identity.user_id, identity.username, now, expires,
                          {"idp": identity.issuer.issuer})

    def _mint(self, user_id: str, username: str, now: float, expires: float,
              extra: dict[str, object]) -> Exchanged:
        issued = int(now)
        claims = {"iss": self._issuer, "aud": self._audience, "sub": user_id,
                  "username": username, "iat": issued, "nbf": issued, "exp": int(expires),
                  "jti": uuid.uuid4().hex, **extra}
        token = jwt.encode(claims, self._key.private_key, algorithm=ALGORITHM,
                           headers={"kid": self._key.kid})
        return Exchanged(access_token=token, expire_time=float(int(expires)), user_id=user_id)
