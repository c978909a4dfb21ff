"""Who may call what: per-method access levels and the check that enforces them.

Every method needs a user's access token unless its service declares it public
(no token needed; a bad token is still refused, as Envoy's `allow_missing`) or
internal (the shared service credential, never a user token).

A credential header sent more than once is refused (AMBIGUOUS_CREDENTIALS), whichever
values it carries: serving the first or the last would let what a proxy adds or keeps
decide who the caller is.

A bearer that is not one of our access tokens — an API key (`llmk_...`) or a JWT of
another issuer (an external OIDC provider) — is exchanged through auth for one of ours
(`CredentialExchange`), and the outcome remembered for at most `EXCHANGE_CACHE_SECONDS`,
so a revoked key stops within seconds. A token minted for an API key carries the key's
scopes, checked here for every method (services/runtime/scopes.py): PERMISSION_DENIED,
SCOPE_NOT_GRANTED, before any work.
"""

from __future__ import annotations

import enum
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jwt

from services.runtime.context import ANONYMOUS, Principal
from services.runtime.errors import LlmmeshError, PermissionDenied, Unauthenticated
from services.runtime.jwt_verify import JwtVerifier, VerifiedToken
from services.runtime.scopes import key_may_call

AUTHORIZATION_HEADER = "authorization"
SERVICE_TOKEN_HEADER = "x-llmmesh-service-token"  # noqa: S105 — a header name
# A service acting for a user who left no token to forward (a queued ingestion job):
# honoured only beside the service credential; the edge strips it from every request.
ON_BEHALF_HEADER = "x-llmmesh-user"
# Where the edge carries an API key past jwt_authn to its ext_authz check (never upstream).
API_KEY_HEADER = "x-llmmesh-api-key"
# Where auth's ext_authz Check leaves, in the edge's dynamic metadata, the access token it
# exchanged a credential (an API key or an OIDC token) for, its expiry (epoch seconds)
# and the credential: the edge reuses the exchange for a moment (gateway/envoy_config.py).
EXCHANGED_TOKEN_KEY = "access_token"  # noqa: S105 — a metadata key
EXCHANGED_EXPIRY_KEY = "expire_time"
EXCHANGED_CREDENTIAL_KEY = "credential"
API_KEY_PREFIX = "llmk_"
EXCHANGE_CACHE_SECONDS = 3.0
EXCHANGE_CACHE_SIZE = 4096

# A credential that is not our access token -> our access token (Unauthenticated if refused).
CredentialExchange = Callable[[str], Awaitable[str]]
# RFC 7235 credentials for the Bearer scheme (any case), one or more spaces, then an
# RFC 6750 b64token (token68: base64url, base64 and JWT characters, trailing "=").
_USER_ID = re.compile(r"[0-9a-f]{32}")
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

    def __init__(self, verifier: JwtVerifier, service_token: str, policy: AccessPolicy,
                 exchange: CredentialExchange | None = None, *, issuer: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._verifier = verifier
        self._service_token = service_token.encode()
        self._policy = policy
        self._exchange = exchange
        self._issuer = issuer
        self._clock = clock
        # credential -> (our token, or the refusal; when to forget it), oldest first
        self._exchanged: OrderedDict[str, tuple[str | LlmmeshError, float]] = OrderedDict()

    async def authenticate(self, method: str,
                           metadata: Mapping[str, Sequence[str]]) -> Principal:
        """The caller of `method`, from the call's metadata: every value of each key."""
        access = self._policy.access(method)
        if access is Access.SERVICE:
            return self._service(metadata)
        authorization = _single(metadata, AUTHORIZATION_HEADER)
        if authorization is None and _single(metadata, ON_BEHALF_HEADER) is not None:
            return self._on_behalf(metadata)
        if authorization is None:
            if access is Access.PUBLIC:
                return ANONYMOUS
            raise Unauthenticated("missing access token (authorization: Bearer <token>)",
                                  reason="MISSING_TOKEN")
        bearer, verified = await self._verified(bearer_token(authorization))
        scopes = verified.claims.get("scope")
        # A service calling on the key holder's behalf (chat's retrieval from document)
        # was already held to the scopes of the method the key called.
        if "key" in verified.claims and not self._from_service(metadata) and not key_may_call(
                method, scopes.split() if isinstance(scopes, str) else ()):
            raise PermissionDenied("this API key's scopes do not allow this method",
                                   reason="SCOPE_NOT_GRANTED",
                                   metadata={"method": method, "scopes": str(scopes or "")})
        return Principal(kind="user", subject=verified.subject, username=verified.username,
                         bearer_token=bearer, claims=verified.claims)

    async def _verified(self, bearer: str) -> tuple[str, VerifiedToken]:
        """The access token to act with (ours: `bearer`, or the one exchanged for it) and
        its verified claims."""
        if self._exchange is None:
            return bearer, await self._verifier.verify(bearer)
        if bearer.startswith(API_KEY_PREFIX):
            token = await self._exchanged_token(bearer)
            return token, await self._verifier.verify(token)
        try:
            return bearer, await self._verifier.verify(bearer)
        except Unauthenticated as ours:
            if not self._foreign(bearer):
                raise
            try:
                token = await self._exchanged_token(bearer)
            except Unauthenticated as refused:
                # Signed with our key under another issuer: our own reason stands.
                if refused.reason == "UNTRUSTED_ISSUER" and ours.reason == "WRONG_ISSUER":
                    raise ours from None
                raise
        return token, await self._verifier.verify(token)

    def _foreign(self, bearer: str) -> bool:
        """Whether `bearer` is a JWT naming another issuer (maybe a trusted external one)."""
        try:
            issuer = jwt.decode(bearer, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return False
        return isinstance(issuer, str) and issuer != self._issuer

    async def _exchanged_token(self, credential: str) -> str:
        assert self._exchange is not None
        now = self._clock()
        remembered = self._exchanged.get(credential)
        if remembered is not None and now < remembered[1]:
            outcome = remembered[0]
        else:
            try:
                outcome = await self._exchange(credential)
            except Unauthenticated as refused:
                outcome = refused
            self._exchanged[credential] = (outcome, now + EXCHANGE_CACHE_SECONDS)
            self._exchanged.move_to_end(credential)
            while len(self._exchanged) > EXCHANGE_CACHE_SIZE:
                self._exchanged.popitem(last=False)
        if isinstance(outcome, LlmmeshError):  # a fresh error each time (its own traceback)
            raise Unauthenticated(outcome.message, reason=outcome.reason,
                                  metadata=outcome.metadata)
        return outcome

    def _on_behalf(self, metadata: Mapping[str, Sequence[str]]) -> Principal:
        """A service calling for a user by id, with the service credential."""
        self._service(metadata)
        user_id = _single(metadata, ON_BEHALF_HEADER) or ""
        if not _USER_ID.fullmatch(user_id):
            raise Unauthenticated(f"{ON_BEHALF_HEADER} must name a user id",
                                  reason="MALFORMED_TOKEN", metadata={"header": ON_BEHALF_HEADER})
        return Principal(kind="user", subject=user_id)

    def _from_service(self, metadata: Mapping[str, Sequence[str]]) -> bool:
        presented = (_single(metadata, SERVICE_TOKEN_HEADER) or "").encode()
        return bool(presented) and hmac.compare_digest(presented, self._service_token)

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
