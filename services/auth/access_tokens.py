"""Short-lived ES256 access tokens."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from services.auth.keys import ALGORITHM, SigningKey


@dataclass(frozen=True)
class IssuedAccessToken:
    token: str
    expire_time: float


class AccessTokenIssuer:
    """Signs access tokens with `kid`, `iss`, `aud`, `sub`, `exp`, `iat`, `jti`."""

    def __init__(self, key: SigningKey, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds

    def issue(self, user_id: str, username: str) -> IssuedAccessToken:
        now = int(time.time())
        expires = now + self._ttl
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "username": username,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key.private_key, algorithm=ALGORITHM,
                           headers={"kid": self._key.kid})
        return IssuedAccessToken(token=token, expire_time=float(expires))
