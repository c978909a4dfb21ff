"""External OIDC access tokens: verified against their issuer's JWKS, mapped to a local
user created on first use.

A token is accepted when its `iss` is a configured issuer (services/runtime/
identity_providers.py), its signature checks out against that issuer's JWKS (RS256 or
ES256; fetched over HTTP, cached, refetched on an unknown kid at most once a second),
and `aud`, `exp` (and `nbf`, `iat` when present) hold.

`(iss, sub)` names the user: the first token creates a local user (username from
`preferred_username`, else the email's local part, made unique with a suffix; the email
kept when no other user has it). It gets an unguessable bcrypt hash, so password login
never works for it. One Lua script under the `{users}` hash tag links and creates, so
concurrent first uses create one user. The token's groups are stored on the user on
every exchange; `GroupSync` (when wired) maps them to teams.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt

from services.auth.passwords import PasswordHasher
from services.auth.users import KEY_PREFIX, email_key, user_key, username_key
from services.runtime.errors import Unauthenticated, Unavailable
from services.runtime.identity_providers import OidcIssuer
from services.runtime.jwt_verify import JwksCache, JwtVerifier, parse_jwks
from services.runtime.redis_client import RedisClient, text

EXTERNAL_ALGORITHMS = ("RS256", "ES256")
EXTERNAL_REQUIRED_CLAIMS = ("exp", "sub", "iss", "aud")
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
MAX_SUBJECT_LENGTH = 255
MAX_GROUPS = 256
_USERNAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

# KEYS: link, new user, email, username candidates... ARGV: id, email, create time,
# password hash, issuer, subject, groups (JSON), then one username per candidate key.
_LINK = """
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
local username, username_key
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    username = ARGV[7 + i - 3]
    username_key = KEYS[i]
    break
  end
end
if not username then return {'taken'} end
local email = ARGV[2]
if email ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then email = '' end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'username', username, 'email', email,
           'password_hash', ARGV[4], 'create_time', ARGV[3], 'idp', ARGV[5],
           'idp_subject', ARGV[6], 'groups', ARGV[7])
redis.call('SET', username_key, ARGV[1])
if email ~= '' then redis.call('SET', KEYS[3], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[1])
return {'created', ARGV[1]}
"""


@dataclass(frozen=True)
class ExternalIdentity:
    """A verified external token, resolved to its local user."""

    issuer: OidcIssuer
    user_id: str
    username: str
    groups: tuple[str, ...]
    expire_time: float


class GroupSync(Protocol):
    """Maps an external user's groups to team memberships (the teams module's hook)."""

    async def __call__(self, user_id: str, groups: Sequence[str],
                       group_teams: dict[str, str]) -> None: ...


class TeamMemberships(Protocol):
    """What group sync needs of the team store (services/auth/teams.py)."""

    async def ensure_member(self, team_id: str, user_id: str) -> bool: ...


class TeamGroupSync:
    """Puts an external user in the team their groups map to (`group_teams`): as a
    member, only when they belong to no team yet (the team store's rule: one team per
    user); a mapping to a missing team is ignored."""

    def __init__(self, teams: TeamMemberships) -> None:
        self._teams = teams

    async def __call__(self, user_id: str, groups: Sequence[str],
                       group_teams: dict[str, str]) -> None:
        for group in groups:
            team_id = group_teams.get(group)
            if team_id and await self._teams.ensure_member(team_id, user_id):
                return


def unverified_issuer(token: str) -> str | None:
    """The `iss` a JWT claims (unverified), or None when it is not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


class OidcProviders:
    """Verifies external tokens and links them to local users."""

    def __init__(self, issuers: Sequence[OidcIssuer], redis: RedisClient,
                 passwords: PasswordHasher, *, leeway_seconds: int = 30,
                 group_sync: GroupSync | None = None) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._verifiers = {
            issuer.issuer: JwtVerifier(
                JwksCache(_http_jwks(issuer.jwks_uri), ttl=300.0,
                          algorithms=EXTERNAL_ALGORITHMS),
                issuer=issuer.issuer, audience=issuer.audience,
                leeway_seconds=leeway_seconds, algorithms=EXTERNAL_ALGORITHMS,
                required_claims=EXTERNAL_REQUIRED_CLAIMS)
            for issuer in issuers}
        self._redis = redis
        self._passwords = passwords
        self._link = redis.register_script(_LINK)
        self._group_sync = group_sync

    def knows(self, issuer: str) -> bool:
        return issuer in self._issuers

    async def verify(self, token: str) -> ExternalIdentity:
        """The local user of a verified external token; Unauthenticated otherwise."""
        claimed = unverified_issuer(token)
        if claimed is None or claimed not in self._issuers:
            raise Unauthenticated("the token's issuer is not a trusted identity provider",
                                  reason="UNTRUSTED_ISSUER")
        issuer = self._issuers[claimed]
        verified = await self._verifiers[claimed].verify(token)
        claims = verified.claims
        if len(verified.subject) > MAX_SUBJECT_LENGTH:  # OIDC Core: at most 255 ASCII
            raise Unauthenticated("the token's subject is too long", reason="INVALID_TOKEN")
        groups = _groups(claims.get(issuer.groups_claim))[:MAX_GROUPS]
        user_id, username = await self._local_user(issuer, verified.subject, claims, groups)
        if self._group_sync is not None:
            await self._group_sync(user_id, groups, dict(issuer.group_teams))
        return ExternalIdentity(issuer=issuer, user_id=user_id, username=username,
                                groups=groups, expire_time=float(claims["exp"]))

    async def _local_user(self, issuer: OidcIssuer, subject: str, claims: dict[str, Any],
                          groups: tuple[str, ...]) -> tuple[str, str]:
        link = _link_key(issuer.issuer, subject)
        existing = await self._redis.get(link)
        if existing is None:
            email = claims.get("email")
            email = email.lower() if isinstance(email, str) and "@" in email else ""
            candidates = _username_candidates(claims, email)
            # Nobody knows this password: password login never works for the user.
            password_hash = await self._passwords.hash(secrets.token_urlsafe(32))
            new_id = uuid.uuid4().hex
            outcome = await self._link(
                keys=[link, user_key(new_id), email_key(email),
                      *(username_key(name) for name in candidates)],
                args=[new_id, email, repr(time.time()), password_hash, issuer.issuer,
                      subject, json.dumps(list(groups)), *candidates])
            if outcome[0] == "taken":
                raise Unavailable("could not find a free username; try again",
                                  reason="USERNAME_UNAVAILABLE")
            user_id = text(outcome[1])
        else:
            user_id = text(existing)
            await self._redis.hset(user_key(user_id), "groups", json.dumps(list(groups)))
        username = await self._redis.hget(user_key(user_id), "username")
        return user_id, text(username) if username is not None else ""


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(group) for group in value if isinstance(group, str | int))
    return ()


def _username_candidates(claims: dict[str, Any], email: str) -> list[str]:
    preferred = claims.get("preferred_username")
    base = preferred if isinstance(preferred, str) and preferred else email.partition("@")[0]
    base = _USERNAME_CHARS.sub("-", base).strip("-._")[:24] or "user"
    if len(base) < 3:
        base = f"{base}-sso"
    return [base, *(f"{base}-{secrets.token_hex(3)}" for _ in range(4))]


def _http_jwks(uri: str) -> Any:
    async def fetch() -> dict[str, Any]:
        try:
            timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(uri) as response:
                if response.status != 200:
                    raise Unavailable(f"identity provider JWKS answered {response.status}",
                                      reason="IDP_UNAVAILABLE")
                return parse_jwks(await response.read())
        except (aiohttp.ClientError, TimeoutError):
            raise Unavailable("identity provider JWKS is unreachable",
                              reason="IDP_UNAVAILABLE") from None

    return fetch


def _link_key(issuer: str, subject: str) -> str:
    return f"{KEY_PREFIX}:idp:{hashlib.sha256(issuer.encode()).hexdigest()[:16]}:{subject}"

