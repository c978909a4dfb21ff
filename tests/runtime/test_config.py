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
    assert len(runtime.service_token.get_secret_value()) >= 32
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


# --- secrets stay out of repr and logs --------------------------------------------------


SIGNING_KEY_PEM = SigningKey.generate().pem().decode()


def test_secrets_are_not_in_repr_str_or_logs(tmp_path: Path) -> None:
    import json as json_module
    import logging

    from services.chat.config import ChatConfig
    from services.embedding.config import EmbeddingConfig
    from services.runtime.logs import JsonFormatter

    models = [{"id": "gpt", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-inline-secret"},
              {"id": "llama", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "LLAMA_KEY"}]
    embedding_models = [{"id": "te3", "provider": "openai", "dimension": 8,
                         "base_url": "http://127.0.0.1:9/v1", "api_key_env": "TE3_KEY"}]
    env = Env({"LLMMESH_DATA_DIR": str(tmp_path), "LLMMESH_SERVICE_TOKEN": GOOD_TOKEN,
               "LLMMESH_AUTH_SIGNING_KEY": SIGNING_KEY_PEM,
               "LLMMESH_REDIS_URL": "redis://:redis-password@redis:6379/0",
               "LLMMESH_CHAT_MODELS": json_module.dumps(models), "LLAMA_KEY": "sk-env-secret",
               "LLMMESH_EMBEDDING_MODELS": json_module.dumps(embedding_models),
               "TE3_KEY": "sk-embedding-secret"})
    configs = [AuthConfig.from_env(env), ChatConfig.from_env(env),
               EmbeddingConfig.from_env(env)]
    record = logging.makeLogRecord({"msg": "config", "levelname": "INFO", "configs": configs,
                                    "token": configs[0].runtime.service_token})
    shown = [repr(configs), str(configs), JsonFormatter("test").format(record)]
    secrets = [GOOD_TOKEN, "redis-password", "sk-inline-secret", "sk-env-secret",
               "sk-embedding-secret", SIGNING_KEY_PEM.splitlines()[1]]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    # The values are all there for the code that needs them.
    auth, chat, embedding = configs
    assert auth.runtime.service_token.get_secret_value() == GOOD_TOKEN
    assert auth.signing_key_pem is not None
    assert auth.signing_key_pem.get_secret_value() == SIGNING_KEY_PEM.strip()
    assert [m.api_key.get_secret_value() for m in chat.models[:2]] == [
        "sk-inline-secret", "sk-env-secret"]
    assert embedding.models[0].api_key.get_secret_value() == "sk-embedding-secret"


def test_a_signing_key_file_is_read_as_a_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(SIGNING_KEY_PEM)
    config = AuthConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path),
                                      "LLMMESH_AUTH_SIGNING_KEY_FILE": str(key_file)}))
    assert config.signing_key_pem is not None
    assert config.signing_key_pem.get_secret_value() == SIGNING_KEY_PEM
    assert SIGNING_KEY_PEM.splitlines()[1] not in repr(config)


# --- production: every peer a service calls is named explicitly -------------------------


PEERS = {"chat": ("auth", "document", "embedding"), "document": ("auth", "embedding"),
         "embedding": ("auth",)}


def _production(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"LLMMESH_ENV": "production", "LLMMESH_SERVICE_TOKEN": GOOD_TOKEN,
            "LLMMESH_DATA_DIR": str(tmp_path), **extra}


def _service_config(service: str, env: Env) -> object:
    from services.chat.config import ChatConfig
    from services.document.config import DocumentConfig
    from services.embedding.config import EmbeddingConfig

    return {"chat": ChatConfig, "document": DocumentConfig,
            "embedding": EmbeddingConfig}[service].from_env(env)


@pytest.mark.parametrize(("service", "missing"), [
    (service, peer) for service, peers in PEERS.items() for peer in peers])
def test_production_refuses_a_missing_peer_address(tmp_path: Path, service: str,
                                                   missing: str) -> None:
    addresses = {f"LLMMESH_{peer.upper()}_ADDRESS": f"{peer}:1" for peer in PEERS[service]
                 if peer != missing}
    variable = f"LLMMESH_{missing.upper()}_ADDRESS"
    with pytest.raises(ConfigError, match=rf"^{variable} is required when "
                                          rf"LLMMESH_ENV=production \({service} calls {missing}\)"):
        _service_config(service, Env(_production(tmp_path, **addresses)))


@pytest.mark.parametrize("service", sorted(PEERS))
def test_production_with_every_peer_address(tmp_path: Path, service: str) -> None:
    addresses = {f"LLMMESH_{peer.upper()}_ADDRESS": f"{peer}:1" for peer in PEERS[service]}
    config = _service_config(service, Env(_production(tmp_path, **addresses)))
    runtime = config.runtime  # type: ignore[attr-defined]
    assert runtime.production and runtime.auth_address == "auth:1"
    for peer in PEERS[service]:
        if peer != "auth":
            assert getattr(config, f"{peer}_address") == f"{peer}:1"


def test_auth_calls_no_peer_and_local_runs_default_to_this_host(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(SIGNING_KEY_PEM)
    auth = AuthConfig.from_env(Env(_production(
        tmp_path, LLMMESH_AUTH_SIGNING_KEY_FILE=str(key_file))))
    assert auth.runtime.production
    from services.chat.config import ChatConfig

    local = ChatConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path),
                                     "LLMMESH_DOCUMENT_PORT": "6000"}))
    assert (local.runtime.auth_address, local.document_address, local.embedding_address) == (
        "127.0.0.1:50051", "127.0.0.1:6000", "127.0.0.1:50054")


# --- Env ---------------------------------------------------------------------------------


def test_env_reads_typed_values() -> None:
    env = Env({"A": " text ", "N": "7", "F": "0.5", "B": "Yes", "BLANK": "  ", "S": "hush"})
    assert (env.text("A"), env.text("MISSING", "fallback")) == ("text", "fallback")
    assert (env.optional("BLANK"), env.optional("A")) == (None, "text")
    assert (env.integer("N", 1, maximum=7), env.integer("MISSING", 3)) == (7, 3)
    assert (env.number("F", 1.0), env.flag("B", False), env.flag("MISSING", True)) == (
        0.5, True, True)
    secret = env.secret("S")
    assert secret is not None and secret.get_secret_value() == "hush"
    assert "hush" not in repr(secret) and env.secret("BLANK") is None
    for read, message in [(lambda: env.text("MISSING"), "MISSING is required"),
                          (lambda: env.integer("A", 1), "A must be an integer"),
                          (lambda: env.integer("N", 1, minimum=8), "N must be at least 8"),
                          (lambda: env.number("A", 1.0), "A must be a number"),
                          (lambda: env.flag("A", False), "A must be true or false")]:
        with pytest.raises(ConfigError, match=message):
            read()
