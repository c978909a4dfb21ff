"""Configuration: safe local defaults, loud refusals of unsafe production settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.auth.config import AuthConfig
from services.auth.keys import SigningKey
from services.runtime.config import ConfigError, Env, RuntimeConfig

GOOD_TOKEN = "p" * 40


def test_local_defaults(tmp_path: Path) -> None:
    config = AuthConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path)}))
    runtime = config.runtime
    assert not runtime.production
    assert (runtime.listen_host, runtime.port, runtime.metrics_port) == ("127.0.0.1", 50051, 9101)
    assert config.bcrypt_cost == 12
    assert config.access_token_ttl_seconds == 900
    assert config.default_monthly_token_limit == 100_000
    # A local run shares one generated service token through the data dir.
    again = RuntimeConfig.from_env("chat", Env({"LLMMESH_DATA_DIR": str(tmp_path)}))
    assert len(runtime.service_token) >= 32
    assert again.service_token == runtime.service_token
    assert again.auth_address == "127.0.0.1:50051"
    assert (tmp_path / "secrets" / "service-token").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("env", "message"), [
    ({}, "LLMMESH_SERVICE_TOKEN is required"),
    ({"LLMMESH_SERVICE_TOKEN": "short"}, "at least 32"),
    ({"LLMMESH_SERVICE_TOKEN": GOOD_TOKEN}, "LLMMESH_AUTH_SIGNING_KEY"),
    ({"LLMMESH_SERVICE_TOKEN": GOOD_TOKEN, "LLMMESH_AUTH_SIGNING_KEY": "KEY",
      "LLMMESH_AUTH_BCRYPT_COST": "8"}, "BCRYPT_COST must be at least 10"),
])
def test_production_refuses_unsafe_settings(tmp_path: Path, env: dict[str, str],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthConfig.from_env(Env({"LLMMESH_ENV": "production",
                                 "LLMMESH_DATA_DIR": str(tmp_path), **env}))


def test_production_with_everything_set(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(SigningKey.generate().pem())
    config = AuthConfig.from_env(Env({
        "LLMMESH_ENV": "production", "LLMMESH_SERVICE_TOKEN": GOOD_TOKEN,
        "LLMMESH_AUTH_SIGNING_KEY_FILE": str(key_file), "LLMMESH_DATA_DIR": str(tmp_path)}))
    assert config.runtime.production and config.signing_key_pem is not None
    assert not (tmp_path / "secrets").exists()  # nothing generated in production


@pytest.mark.parametrize(("env", "message"), [
    ({"LLMMESH_AUTH_PORT": "http"}, "must be an integer"),
    ({"LLMMESH_AUTH_PORT": "70000"}, "at most 65535"),
    ({"LLMMESH_AUTH_BCRYPT_COST": "3"}, "at least 4"),
    ({"LLMMESH_ENV": "staging"}, "local or production"),
    ({"LLMMESH_AUTH_SIGNING_KEY_FILE": "/nonexistent/key.pem"}, "SIGNING_KEY_FILE"),
])
def test_malformed_values_are_named(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path), **env}))


def test_a_signing_key_that_is_not_p256_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(ConfigError, match="P-256"):
        SigningKey.from_pem(rsa_pem)
