"""Access-token verification against auth's JWKS, cached and refetched on an unknown kid.

Only the asymmetric algorithms auth signs with are accepted, so `alg: none` and
HS256 tokens (including ones "signed" with a public key as an HMAC secret) fail.

A verified token is remembered (by its exact text) for a short while, so a client's
calls after the first skip the signature check, the largest fixed cost of a call: at
most `VERIFIED_TTL_SECONDS`, and never past the token's own expiry. A signing key
withdrawn from the JWKS therefore stops its tokens within that time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt

from services.runtime.errors import Unauthenticated

ACCEPTED_ALGORITHMS = ("ES256",)
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "jti")
_KEY_TYPE_ALGORITHMS: dict[tuple[object, object], str] = {
    ("RSA", None): "RS256", ("EC", "P-256"): "ES256"}
VERIFIED_TTL_SECONDS = 60.0
VERIFIED_CACHE_SIZE = 4096

JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class VerifiedToken:
    """The verified claims of an access token."""

    subject: str
    username: str
    claims: dict[str, Any]


class JwksCache:
    """Signing keys by kid, fetched with `fetch` and kept for `ttl` seconds.

    An unknown kid triggers one refetch, at most once per `refetch_interval` seconds,
    so a stream of forged kids cannot hammer auth.
    """

    def __init__(self, fetch: JwksFetcher, *, ttl: float = 300.0,
                 refetch_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 algorithms: tuple[str, ...] = ACCEPTED_ALGORITHMS) -> None:
        self._fetch = fetch
        self._algorithms = algorithms
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, refreshing the set when stale or when kid is unknown."""
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at > self._ttl:
            await self._refresh(only_if_older_than=self._ttl)
        found = self._keys.get(kid)
        if found is None:
            await self._refresh(only_if_older_than=self._refetch_interval)
            found = self._keys.get(kid)
        return found

    async def _refresh(self, *, only_if_older_than: float) -> None:
        async with self._lock:
            if (self._fetched_at is not None
                    and self._clock() - self._fetched_at <= only_if_older_than):
                return  # another caller refreshed while we waited
            document = await self._fetch()
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                if not isinstance(entry, dict) or not entry.get("kid"):
                    continue
                # An external issuer's JWKS may leave `alg` out: then the key type says.
                algorithm = entry.get("alg") or _KEY_TYPE_ALGORITHMS.get(
                    (entry.get("kty"), entry.get("crv")))
                if algorithm in self._algorithms and entry.get("use", "sig") == "sig":
                    try:
                        keys[entry["kid"]] = jwt.PyJWK.from_dict(entry, algorithm)
                    except jwt.PyJWTError:
                        continue  # a malformed key is skipped, not fatal
            self._keys = keys
            self._fetched_at = self._clock()


class JwtVerifier:
    """Verifies access tokens: signature, algorithm, kid, issuer, audience and times."""

    def __init__(self, keys: JwksCache, *, issuer: str, audience: str,
                 leeway_seconds: int = 30, clock: Callable[[], float] = time.time,
                 algorithms: tuple[str, ...] = ACCEPTED_ALGORITHMS,
                 required_claims: tuple[str, ...] = REQUIRED_CLAIMS) -> None:
        self._keys = keys
        self._algorithms = algorithms
        self._required = required_claims
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        # token -> (claims, when to forget them); insertion order: oldest first
        self._verified: dict[str, tuple[VerifiedToken, float]] = {}

    async def verify(self, token: str) -> VerifiedToken:
        """The token's claims, or Unauthenticated with a reason."""
        now = self._clock()
        remembered = self._verified.get(token)
        if remembered is not None:
            if now < remembered[1]:
                return remembered[0]
            del self._verified[token]
        verified = await self._verify(token)
        # exp is an integer or float per RFC 7519 (pyjwt checked it); past exp + leeway
        # the token must be refused again, with its own reason.
        forget_at = min(now + VERIFIED_TTL_SECONDS,
                        float(verified.claims["exp"]) + self._leeway)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (verified, forget_at)
        return verified

    async def _verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _refused("MALFORMED_TOKEN", "access token is malformed") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise _refused("UNSUPPORTED_ALGORITHM",
                           f"access token algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refused("MISSING_KEY_ID", "access token has no key id")
        key = await self._keys.key(kid)
        if key is None:
            raise _refused("UNKNOWN_KEY_ID", "access token was signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(self._required)},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("TOKEN_EXPIRED", "access token has expired") from None
        except jwt.InvalidAudienceError:
            raise _refused("WRONG_AUDIENCE", "access token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _refused("WRONG_ISSUER", "access token has the wrong issuer") from None
        except jwt.InvalidTokenError:
            raise _refused("INVALID_TOKEN", "access token is invalid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _refused("INVALID_TOKEN", "access token has no subject")
        return VerifiedToken(subject=subject, username=str(claims.get("username", "")),
                             claims=claims)


def _refused(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def parse_jwks(data: bytes) -> dict[str, Any]:
    """Decode a JWKS document; a malformed one counts as empty."""
    try:
        document = json.loads(data)
    except ValueError:
        return {"keys": []}
    return document if isinstance(document, dict) else {"keys": []}
