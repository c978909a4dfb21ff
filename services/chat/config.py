"""Chat service configuration: limits, memory, peers and the model registry.

`LLMMESH_CHAT_MODELS` is a JSON list of model entries (see `ChatModelEntry`), e.g.

    [{"id": "llama", "provider": "openai", "model": "llama3.1",
      "base_url": "http://127.0.0.1:11434/v1", "api_key_env": "OLLAMA_KEY",
      "max_output_tokens": 4096, "default_max_tokens": 1024}]

An entry may name `fallbacks` (model ids, tried in order when it fails before its
first token), a `retry` policy (`max_attempts`, `initial_backoff_seconds`,
`max_backoff_seconds`, `backoff_multiplier`) and a `first_token_timeout_seconds`;
see services/chat/fallback.py.

The built-in offline `extractive` model is always registered; it is the default
unless `LLMMESH_CHAT_DEFAULT_MODEL` names another model or an entry says
`"default": true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

from services.runtime.config import ConfigError, Env, RuntimeConfig
from services.runtime.json_entries import StrictPositiveInteger, parse_entries

MODELS_VARIABLE = "LLMMESH_CHAT_MODELS"
EXTRACTIVE_ID = "extractive"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def _model_id(value: str) -> str:
    if not _MODEL_ID.match(value):
        raise PydanticCustomError(
            "model_id", "must be 1-64 letters, digits, '.', '_', ':' or '-'")
    return value


class RetryEntry(BaseModel):
    """A model's `retry` policy, as written (see services/chat/fallback.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=10)  # tries of this model, first included
    initial_backoff_seconds: float = Field(default=0.2, ge=0, le=60)
    max_backoff_seconds: float = Field(default=5.0, ge=0, le=600)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)


class ChatModelEntry(BaseModel):
    """One entry of `LLMMESH_CHAT_MODELS`, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, AfterValidator(_model_id)]  # what requests name in ChatOptions.model
    # "openai" (any OpenAI-compatible endpoint) or "extractive"
    provider: Literal["openai", "extractive"] = "openai"
    model: str = ""  # the provider's model name; the id when empty
    base_url: str | None = None
    api_key: SecretStr = SecretStr("")
    api_key_env: str = ""  # the variable holding the key (keeps it out of this JSON)
    max_output_tokens: StrictPositiveInteger = 4096
    default_max_tokens: StrictPositiveInteger = 1024
    timeout_seconds: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=0, ge=0)
    default: bool = False
    # Models that answer, in order, when this one fails before its first token.
    fallbacks: tuple[Annotated[str, AfterValidator(_model_id)], ...] = ()
    retry: RetryEntry = Field(default_factory=RetryEntry)
    # No text within this long counts as a retryable failure (None: the whole timeout).
    first_token_timeout_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.id in self.fallbacks:
            raise ValueError("a model cannot fall back to itself")
        if len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError("fallbacks repeat a model")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("base_url is required for provider openai")
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens exceeds max_output_tokens")
        return self


@dataclass(frozen=True)
class RetryPolicy:
    """How often a model is tried before its chain moves on, and the waits between."""

    max_attempts: int = 1
    initial_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    backoff_multiplier: float = 2.0


@dataclass(frozen=True)
class ModelSpec:
    """One configured chat model."""

    id: str  # what requests name in ChatOptions.model
    provider: str  # "openai" (any OpenAI-compatible endpoint) or "extractive"
    model: str = ""  # the provider's model name; the id when empty
    base_url: str | None = None
    api_key: SecretStr = field(default_factory=lambda: SecretStr(""))
    max_output_tokens: int = 4096  # largest max_tokens a request may ask for
    default_max_tokens: int = 1024  # max_tokens when a request sets none
    timeout_seconds: float = 120.0  # one provider call, first byte to last
    max_retries: int = 0  # the client's own retries (429/5xx); 0 lets callers decide
    default: bool = False
    fallbacks: tuple[str, ...] = ()  # model ids answering when this one cannot start
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    first_token_timeout_seconds: float | None = None

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
    # Resumable streams (services/chat/live_turns.py): how long a turn's event log is
    # kept, how long a turn nobody reads keeps running, how often it checks.
    resume_ttl_seconds: int = 3600
    disconnect_grace_seconds: float = 30.0
    turn_heartbeat_seconds: float = 0.5

    @classmethod
    def from_env(cls, env: Env | None = None) -> ChatConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("chat", env)
        models = parse_models(env.optional(MODELS_VARIABLE), env)
        default = _default_model(models, env.optional("LLMMESH_CHAT_DEFAULT_MODEL"))
        return cls(
            runtime=runtime,
            models=models,
            default_model=default,
            history_turns=env.integer("LLMMESH_CHAT_HISTORY_TURNS", 10, minimum=0,
                                      maximum=200),
            retention_seconds=env.integer("LLMMESH_CHAT_RETENTION_SECONDS", 30 * 86400,
                                          minimum=60),
            max_message_chars=env.integer("LLMMESH_CHAT_MAX_MESSAGE_CHARS", 32_768, minimum=1,
                                          maximum=1_000_000),
            document_address=runtime.peer_address(env, "document"),
            embedding_address=runtime.peer_address(env, "embedding"),
            reservation_ttl_seconds=env.integer("LLMMESH_CHAT_RESERVATION_TTL_SECONDS", 300,
                                                minimum=1, maximum=86400),
            peer_timeout_seconds=env.number("LLMMESH_CHAT_PEER_TIMEOUT_SECONDS", 10.0,
                                            minimum=0.1),
            resume_ttl_seconds=env.integer("LLMMESH_CHAT_RESUME_TTL_SECONDS", 3600,
                                           minimum=10, maximum=7 * 86400),
            disconnect_grace_seconds=env.number("LLMMESH_CHAT_DISCONNECT_GRACE_SECONDS", 30.0),
            turn_heartbeat_seconds=env.number("LLMMESH_CHAT_TURN_HEARTBEAT_SECONDS", 0.5,
                                              minimum=0.02),
        )


def parse_models(raw: str | None, env: Env) -> tuple[ModelSpec, ...]:
    """The configured models plus the built-in extractive one (unless configured)."""
    entries = parse_entries(MODELS_VARIABLE, raw, ChatModelEntry) if raw else []
    models = [_spec(entry, index, env) for index, entry in enumerate(entries)]
    ids = [model.id for model in models]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{MODELS_VARIABLE} repeats a model id: {ids}")
    if EXTRACTIVE_ID not in ids:
        models.append(ModelSpec(id=EXTRACTIVE_ID, provider="extractive",
                                max_output_tokens=2048, default_max_tokens=512))
    known = {model.id for model in models}
    for index, model in enumerate(models):
        unknown = [name for name in model.fallbacks if name not in known]
        if unknown:
            raise ConfigError(f"{MODELS_VARIABLE}[{index}].fallbacks names unknown models "
                              f"{unknown}: the models are {sorted(known)}")
    return tuple(models)


def _spec(entry: ChatModelEntry, index: int, env: Env) -> ModelSpec:
    api_key = entry.api_key
    if entry.api_key_env:
        named = env.secret(entry.api_key_env)
        if named is None:
            raise ConfigError(f"{entry.api_key_env} is required "
                              f"({MODELS_VARIABLE}[{index}].api_key_env names it)")
        api_key = named
    return ModelSpec(
        id=entry.id, provider=entry.provider, model=entry.model or entry.id,
        base_url=entry.base_url or None, api_key=api_key or SecretStr("unused"),
        max_output_tokens=entry.max_output_tokens, default_max_tokens=entry.default_max_tokens,
        timeout_seconds=entry.timeout_seconds, max_retries=entry.max_retries,
        default=entry.default, fallbacks=entry.fallbacks,
        retry=RetryPolicy(**entry.retry.model_dump()),
        first_token_timeout_seconds=entry.first_token_timeout_seconds)


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
