"""External OIDC identity providers, configured by one variable shared by auth and the
edge generator: `LLMMESH_OIDC_ISSUERS`, a JSON list of

    {"issuer": "https://idp.example.com", "audience": "llmmesh",
     "jwks_uri": "https://idp.example.com/.well-known/jwks.json",
     "groups_claim": "groups", "group_teams": {"engineering": "<team id>"}}

`groups_claim` (default `groups`) names the claim listing the user's groups;
`group_teams` maps a group to a team the user joins (see docs/identity.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from services.runtime.config import ConfigError, Env

OIDC_ISSUERS_VARIABLE = "LLMMESH_OIDC_ISSUERS"


class OidcIssuer(BaseModel):
    """One trusted external issuer of access tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_uri: str
    groups_claim: str = "groups"
    group_teams: dict[str, str] = Field(default_factory=dict)

    @field_validator("jwks_uri")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value


_ISSUERS = TypeAdapter(list[OidcIssuer])


def oidc_issuers(env: Env) -> tuple[OidcIssuer, ...]:
    """The configured issuers (none when the variable is unset)."""
    raw = env.optional(OIDC_ISSUERS_VARIABLE)
    if raw is None:
        return ()
    try:
        issuers = _ISSUERS.validate_json(raw)
    except ValidationError as error:
        raise ConfigError(f"{OIDC_ISSUERS_VARIABLE}: {error}") from None
    names = [issuer.issuer for issuer in issuers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{OIDC_ISSUERS_VARIABLE}: an issuer is listed twice")
    return tuple(issuers)
