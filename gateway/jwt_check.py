"""The edge's JWT check, with jwt_authn's outcomes: a public method takes no token
(`allow_missing`) but refuses a bad one; any other method needs a valid token.

Failures answer as jwt_authn does: 401 with `www-authenticate: Bearer realm="<url>"`
(plus `error="invalid_token"` unless the token is missing) and jwt_authn's message
("Jwt is missing", "Jwt is expired", ...); a token for another audience is 403.
Verified tokens are cached until they expire (like jwt_authn's `jwt_cache_config`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from services.runtime.errors import LlmmeshError, Unauthenticated
from services.runtime.jwt_verify import JwtVerifier, VerifiedToken

# Our verifier's reasons -> (HTTP status, jwt_authn's message).
_FAILURES = {
    "MALFORMED_TOKEN": (401, "Jwt is not in the form of Header.Payload.Signature "
                             "with two dots and 3 sections"),
    "UNSUPPORTED_ALGORITHM": (401, "Jwks doesn't have key to match kid or alg from Jwt"),
    "MISSING_KEY_ID": (401, "Jwks doesn't have key to match kid or alg from Jwt"),
    "UNKNOWN_KEY_ID": (401, "Jwks doesn't have key to match kid or alg from Jwt"),
    "TOKEN_EXPIRED": (401, "Jwt is expired"),
    "WRONG_AUDIENCE": (403, "Audiences in Jwt are not allowed"),
    "WRONG_ISSUER": (401, "Jwt issuer is not configured"),
    "INVALID_TOKEN": (401, "Jwt verification fails"),
}
MISSING = "Jwt is missing"
JWKS_FAILED = "Jwks remote fetch is failed"


class JwtFailure(Exception):
    """The request is refused before it reaches a service."""

    def __init__(self, status: int, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.missing = missing

    def www_authenticate(self, url: str) -> str:
        realm = f'Bearer realm="{url}"'
        return realm if self.missing else f'{realm}, error="invalid_token"'


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class EdgeJwt:
    """Checks requests' tokens with a JwtVerifier, caching verified ones."""

    def __init__(self, verifier: JwtVerifier, *, cache_size: int = 1000,
                 leeway_seconds: int = 30, clock: Callable[[], float] = time.time) -> None:
        self._verifier = verifier
        self._cache: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._cache_size = cache_size
        self._leeway = leeway_seconds
        self._clock = clock

    async def check(self, authorization: str | None, *, required: bool) -> VerifiedToken | None:
        """The verified token, None when absent and not required; raises JwtFailure."""
        token = bearer_token(authorization)
        if token is None:
            if required:
                raise JwtFailure(401, MISSING, missing=True)
            return None
        cached = self._cache.get(token)
        if cached is not None:
            if float(cached.claims.get("exp", 0)) + self._leeway >= self._clock():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        try:
            verified = await self._verifier.verify(token)
        except Unauthenticated as error:
            status, message = _FAILURES.get(error.reason, (401, "Jwt verification fails"))
            raise JwtFailure(status, message) from None
        except LlmmeshError:  # the JWKS could not be fetched
            raise JwtFailure(401, JWKS_FAILED) from None
        self._cache[token] = verified
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return verified
