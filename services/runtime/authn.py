"""Who may call what: per-method access levels and the check that enforces them.

Every method needs a user's access token unless its service declares it public
(no token needed; a bad token is still refused, as Envoy's `allow_missing`) or
internal (the shared service credential, never a user token).

A credential header sent more than once is refused (AMBIGUOUS_CREDENTIALS), whichever
values it carries: serving the first or the last would let what a proxy adds or keeps
decide who the caller is.
"""

from __future__ import annotations

import enum
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.runtime.context import ANONYMOUS, Principal
from services.runtime.errors import Unauthenticated
from services.runtime.jwt_verify import JwtVerifier

AUTHORIZATION_HEADER = "authorization"
SERVICE_TOKEN_HEADER = "x-llmmesh-service-token"  # noqa: S105 — a header name
# RFC 7235 credentials for the Bearer scheme (any case), one or more spaces, then an
# RFC 6750 b64token (token68: base64url, base64 and JWT characters, trailing "=").
_BEARER_CREDENTIALS = re.compile(r"bearer +([A-Za-z0-9._~+/-]+=*)", re.IGNORECASE)

ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class Access(enum.Enum):
    PUBLIC = "public"
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True)
class AccessPolicy:
    """Access level per full method name (`/pkg.Service/Method`); USER by default."""

    public: frozenset[str] = field(default_factory=frozenset)
    internal: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, *, public: Iterable[str] = (), internal: Iterable[str] = ()) -> AccessPolicy:
        return cls(public=frozenset(public), internal=frozenset(internal))

    def access(self, method: str) -> Access:
        if method in self.internal:
            return Access.SERVICE
        if method in self.public or method.startswith(ALWAYS_PUBLIC_PREFIXES):
            return Access.PUBLIC
        return Access.USER


def service_methods(service_full_name: str, methods: Iterable[str]) -> list[str]:
    """Full method names for `methods` of a service (e.g. `llmmesh.auth.v1.AuthService`)."""
    return [f"/{service_full_name}/{name}" for name in methods]


class Authenticator:
    """Turns a call's metadata into a Principal, or refuses it."""

    def __init__(self, verifier: JwtVerifier, service_token: str, policy: AccessPolicy) -> None:
        self._verifier = verifier
        self._service_token = service_token.encode()
        self._policy = policy

    async def authenticate(self, method: str,
                           metadata: Mapping[str, Sequence[str]]) -> Principal:
        """The caller of `method`, from the call's metadata: every value of each key."""
        access = self._policy.access(method)
        if access is Access.SERVICE:
            return self._service(metadata)
        authorization = _single(metadata, AUTHORIZATION_HEADER)
        if authorization is None:
            if access is Access.PUBLIC:
                return ANONYMOUS
            raise Unauthenticated("missing access token (authorization: Bearer <token>)",
                                  reason="MISSING_TOKEN")
        bearer = bearer_token(authorization)
        verified = await self._verifier.verify(bearer)
        return Principal(kind="user", subject=verified.subject, username=verified.username,
                         bearer_token=bearer, claims=verified.claims)

    def _service(self, metadata: Mapping[str, Sequence[str]]) -> Principal:
        presented = (_single(metadata, SERVICE_TOKEN_HEADER) or "").encode()
        if not presented or not hmac.compare_digest(presented, self._service_token):
            raise Unauthenticated("this method is internal: a service credential is required",
                                  reason="SERVICE_CREDENTIAL_REQUIRED")
        return Principal(kind="service", subject="service")


def _single(metadata: Mapping[str, Sequence[str]], header: str) -> str | None:
    """The one value of a credential header; None when absent, refused when repeated."""
    values = metadata.get(header, ())
    if len(values) > 1:
        raise Unauthenticated(f"{header} was sent {len(values)} times: send one credential",
                              reason="AMBIGUOUS_CREDENTIALS", metadata={"header": header})
    return values[0] if values else None


def bearer_token(authorization: str) -> str:
    """The token of an `authorization` value `Bearer <token>`.

    As RFC 7235 says, the scheme is case-insensitive (`bearer`, `BEARER`); anything but
    the Bearer scheme with one b64token is refused with MALFORMED_TOKEN.
    """
    match = _BEARER_CREDENTIALS.fullmatch(authorization.strip())
    if match is None:
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="MALFORMED_TOKEN")
    return match.group(1)
