"""Auth service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from services.runtime.config import PRODUCTION, ConfigError, Env, RuntimeConfig
from services.runtime.identity_providers import OidcIssuer, oidc_issuers

PRODUCTION_MIN_BCRYPT_COST = 10


@dataclass(frozen=True)
class AuthConfig:
    """Everything the auth service reads from the environment."""

    runtime: RuntimeConfig
    signing_key_pem: SecretStr | None  # None: generate one in the data dir (local only)
    access_token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    bcrypt_cost: int
    default_monthly_token_limit: int
    reservation_ttl_seconds: int
    # External OIDC issuers whose access tokens are accepted (LLMMESH_OIDC_ISSUERS).
    oidc_issuers: tuple[OidcIssuer, ...] = ()

    @classmethod
    def from_env(cls, env: Env | None = None) -> AuthConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("auth", env)
        config = cls(
            runtime=runtime,
            signing_key_pem=_signing_key(env),
            access_token_ttl_seconds=env.integer("LLMMESH_AUTH_ACCESS_TOKEN_TTL_SECONDS", 900,
                                                 minimum=30, maximum=86400),
            refresh_token_ttl_seconds=env.integer("LLMMESH_AUTH_REFRESH_TOKEN_TTL_SECONDS",
                                                  30 * 86400, minimum=60),
            bcrypt_cost=env.integer("LLMMESH_AUTH_BCRYPT_COST", 12, minimum=4, maximum=16),
            default_monthly_token_limit=env.integer("LLMMESH_AUTH_DEFAULT_MONTHLY_TOKEN_LIMIT",
                                                    100_000, minimum=0),
            reservation_ttl_seconds=env.integer("LLMMESH_AUTH_RESERVATION_TTL_SECONDS", 300,
                                                minimum=1, maximum=86400),
            oidc_issuers=oidc_issuers(env),
        )
        if runtime.production:
            if config.signing_key_pem is None:
                raise ConfigError("LLMMESH_AUTH_SIGNING_KEY or LLMMESH_AUTH_SIGNING_KEY_FILE "
                                  f"is required when {PRODUCTION}")
            if config.bcrypt_cost < PRODUCTION_MIN_BCRYPT_COST:
                raise ConfigError(f"LLMMESH_AUTH_BCRYPT_COST must be at least "
                                  f"{PRODUCTION_MIN_BCRYPT_COST} when {PRODUCTION}")
        return config


def _signing_key(env: Env) -> SecretStr | None:
    inline = env.secret("LLMMESH_AUTH_SIGNING_KEY")
    path = env.optional("LLMMESH_AUTH_SIGNING_KEY_FILE")
    if inline and path:
        raise ConfigError("set LLMMESH_AUTH_SIGNING_KEY or LLMMESH_AUTH_SIGNING_KEY_FILE, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return SecretStr(handle.read())
        except OSError as error:
            raise ConfigError(f"LLMMESH_AUTH_SIGNING_KEY_FILE: {error}") from None
    return inline
