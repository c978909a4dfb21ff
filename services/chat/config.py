"""Chat service configuration: limits, memory, peers and the model registry.

`LLMMESH_CHAT_MODELS` is a JSON list of model entries (see `ModelSpec`), e.g.

    [{"id": "llama", "provider": "openai", "model": "llama3.1",
      "base_url": "http://127.0.0.1:11434/v1", "api_key_env": "OLLAMA_KEY",
      "max_output_tokens": 4096, "default_max_tokens": 1024}]

The built-in offline `extractive` model is always registered; it is the default
unless `LLMMESH_CHAT_DEFAULT_MODEL` names another model or an entry says
`"default": true`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from services.runtime.config import ConfigError, Env, RuntimeConfig, endpoint

EXTRACTIVE_ID = "extractive"
PROVIDERS = ("openai", "extractive")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True)
class ModelSpec:
    """One configured chat model."""

    id: str  # what requests name in ChatOptions.model
    provider: str  # "openai" (any OpenAI-compatible endpoint) or "extractive"
    model: str = ""  # the provider's model name; the id when empty
    base_url: str | None = None
    api_key: str = field(default="", repr=False)
    max_output_tokens: int = 4096  # largest max_tokens a request may ask for
    default_max_tokens: int = 1024  # max_tokens when a request sets none
    timeout_seconds: float = 120.0  # one provider call, first byte to last
    max_retries: int = 0  # the client's own retries (429/5xx); 0 lets callers decide
    default: bool = False

    @property
    def generative(self) -> bool:
        return self.provider != "extractive"


@dataclass(frozen=True)
class ChatConfig:
    """Everything the chat service reads from the environment."""

    runtime: RuntimeConfig
    models: tuple[ModelSpec, ...]
    default_model: str
    history_turns: int
    retention_seconds: int
    max_message_chars: int
    document_address: str
    embedding_address: str
    reservation_ttl_seconds: int
    peer_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Env | None = None) -> ChatConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("chat", env)
        models = parse_models(env.optional("LLMMESH_CHAT_MODELS"), env)
        default = _default_model(models, env.optional("LLMMESH_CHAT_DEFAULT_MODEL"))
        host = runtime.listen_host
        return cls(
            runtime=runtime,
            models=models,
            default_model=default,
            history_turns=env.int("LLMMESH_CHAT_HISTORY_TURNS", 10, minimum=0, maximum=200),
            retention_seconds=env.int("LLMMESH_CHAT_RETENTION_SECONDS", 30 * 86400,
                                      minimum=60),
            max_message_chars=env.int("LLMMESH_CHAT_MAX_MESSAGE_CHARS", 32_768, minimum=1,
                                      maximum=1_000_000),
            document_address=endpoint(env, "document", host).address,
            embedding_address=endpoint(env, "embedding", host).address,
            reservation_ttl_seconds=env.int("LLMMESH_CHAT_RESERVATION_TTL_SECONDS", 300,
                                            minimum=1, maximum=86400),
            peer_timeout_seconds=env.float("LLMMESH_CHAT_PEER_TIMEOUT_SECONDS", 10.0,
                                           minimum=0.1),
        )


def parse_models(raw: str | None, env: Env) -> tuple[ModelSpec, ...]:
    """The configured models plus the built-in extractive one (unless configured)."""
    entries: list[Any] = []
    if raw:
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigError(f"LLMMESH_CHAT_MODELS is not valid JSON: {error}") from None
        if not isinstance(entries, list):
            raise ConfigError("LLMMESH_CHAT_MODELS must be a JSON list of model entries")
    models = [_spec(entry, index, env) for index, entry in enumerate(entries)]
    ids = [model.id for model in models]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"LLMMESH_CHAT_MODELS repeats a model id: {ids}")
    if EXTRACTIVE_ID not in ids:
        models.append(ModelSpec(id=EXTRACTIVE_ID, provider="extractive",
                                max_output_tokens=2048, default_max_tokens=512))
    return tuple(models)


_KNOWN_KEYS = {"id", "provider", "model", "base_url", "api_key", "api_key_env",
               "max_output_tokens", "default_max_tokens", "timeout_seconds", "max_retries",
               "default"}


def _spec(entry: Any, index: int, env: Env) -> ModelSpec:
    where = f"LLMMESH_CHAT_MODELS[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}")
    model_id = str(entry.get("id", ""))
    if not _MODEL_ID.match(model_id):
        raise ConfigError(f"{where}.id must be 1-64 letters, digits, '.', '_', ':' or '-'")
    provider = str(entry.get("provider", "openai"))
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}.provider must be one of {PROVIDERS}, got {provider!r}")
    base_url = entry.get("base_url")
    if provider == "openai" and not base_url:
        raise ConfigError(f"{where}.base_url is required for provider openai")
    api_key = str(entry.get("api_key", ""))
    if entry.get("api_key_env"):
        api_key = env.str(str(entry["api_key_env"]))
    spec = ModelSpec(
        id=model_id, provider=provider, model=str(entry.get("model") or model_id),
        base_url=str(base_url) if base_url else None, api_key=api_key or "unused",
        max_output_tokens=_positive(entry, "max_output_tokens", 4096, where),
        default_max_tokens=_positive(entry, "default_max_tokens", 1024, where),
        timeout_seconds=float(entry.get("timeout_seconds", 120.0)),
        max_retries=int(entry.get("max_retries", 0)),
        default=bool(entry.get("default", False)))
    if spec.default_max_tokens > spec.max_output_tokens:
        raise ConfigError(f"{where}.default_max_tokens exceeds max_output_tokens")
    if spec.timeout_seconds <= 0 or spec.max_retries < 0:
        raise ConfigError(f"{where}: timeout_seconds must be positive, max_retries >= 0")
    return spec


def _positive(entry: dict[str, Any], key: str, default: int, where: str) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}.{key} must be a positive integer")
    return value


def _default_model(models: tuple[ModelSpec, ...], named: str | None) -> str:
    ids = [model.id for model in models]
    if named is not None:
        if named not in ids:
            raise ConfigError(f"LLMMESH_CHAT_DEFAULT_MODEL {named!r} is not a model: {ids}")
        return named
    flagged = [model.id for model in models if model.default]
    if len(flagged) > 1:
        raise ConfigError(f"more than one model says default: {flagged}")
    return flagged[0] if flagged else EXTRACTIVE_ID
