"""Embedding service configuration: the model registry and request limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from services.runtime.config import ConfigError, Env, RuntimeConfig
from services.runtime.json_entries import PositiveInteger, parse_entries

LOCAL_MODEL_ID = "all-minilm-l6-v2"
MODELS_VARIABLE = "LLMMESH_EMBEDDING_MODELS"
PROVIDERS = ("local", "openai")


class EmbeddingModelEntry(BaseModel):
    """One entry of `LLMMESH_EMBEDDING_MODELS`, as written (other keys are ignored)."""

    model_config = ConfigDict(frozen=True)

    id: str
    provider: str  # "local" or "openai"
    dimension: PositiveInteger | None = None  # required for openai
    model: str = ""  # the provider's model name (openai); the id when empty
    base_url: str = ""  # required for openai
    api_key_env: str = ""  # the variable holding the key (keys never sit in this JSON)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise PydanticCustomError("unknown_provider",
                                      "is an unknown provider (local or openai)")
        return value

    @model_validator(mode="after")
    def _openai_needs(self) -> Self:
        if self.provider == "openai" and self.dimension is None:
            raise ValueError("dimension is required for provider openai")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("base_url is required for provider openai")
        return self


@dataclass(frozen=True)
class ModelSpec:
    """One configured embedding model."""

    model_id: str
    provider: str  # "local" | "openai"
    dimension: int = 0  # known from the model for local ones
    model: str = ""  # provider's model name (openai)
    base_url: str = ""
    api_key_env: str = ""  # name of the variable holding the key (keys never sit in specs)
    api_key: SecretStr = field(default_factory=lambda: SecretStr(""))


@dataclass(frozen=True)
class EmbeddingConfig:
    """Everything the embedding service reads from the environment."""

    runtime: RuntimeConfig
    models: tuple[ModelSpec, ...]
    default_model: str
    max_texts_per_call: int
    max_chars_per_text: int
    batch_size: int
    local_runtime: str  # "auto" (ONNX when it can be had), "onnx" or "torch"
    model_dir: Path  # where the local model's ONNX export lives
    threads: int  # inference threads of the local model

    @classmethod
    def from_env(cls, env: Env | None = None) -> EmbeddingConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("embedding", env)
        models = _models(env)
        default = env.text("LLMMESH_EMBEDDING_DEFAULT_MODEL", models[0].model_id)
        if default not in {m.model_id for m in models}:
            raise ConfigError(f"LLMMESH_EMBEDDING_DEFAULT_MODEL {default!r} is not a "
                              "configured model")
        return cls(
            runtime=runtime,
            models=models,
            default_model=default,
            max_texts_per_call=env.integer("LLMMESH_EMBEDDING_MAX_TEXTS", 256, minimum=1),
            max_chars_per_text=env.integer("LLMMESH_EMBEDDING_MAX_CHARS", 8192, minimum=1),
            # Small model batches: on CPU, long texts embed as fast one by one as 32 at a
            # time (measured), and onnxruntime's arena keeps the peak (327 vs 633 MiB).
            batch_size=env.integer("LLMMESH_EMBEDDING_BATCH_SIZE", 8, minimum=1, maximum=1024),
            local_runtime=_runtime(env),
            model_dir=Path(env.text("LLMMESH_EMBEDDING_MODEL_DIR", str(_default_model_dir()))),
            threads=env.integer("LLMMESH_EMBEDDING_THREADS", os.cpu_count() or 1, minimum=1,
                            maximum=256),
        )


def _runtime(env: Env) -> str:
    runtime = env.text("LLMMESH_EMBEDDING_LOCAL_RUNTIME", "auto").lower()
    if runtime not in {"auto", "onnx", "torch"}:
        raise ConfigError("LLMMESH_EMBEDDING_LOCAL_RUNTIME must be auto, onnx or torch")
    return runtime


def _default_model_dir() -> Path:
    from services.embedding.onnx_model import default_model_dir

    return default_model_dir()


def _models(env: Env) -> tuple[ModelSpec, ...]:
    """`LLMMESH_EMBEDDING_MODELS` (see `EmbeddingModelEntry`); the bundled local model
    when unset."""
    raw = env.optional(MODELS_VARIABLE)
    if raw is None:
        return (ModelSpec(model_id=LOCAL_MODEL_ID, provider="local"),)
    entries = parse_entries(MODELS_VARIABLE, raw, EmbeddingModelEntry)
    if not entries:
        raise ConfigError(f"{MODELS_VARIABLE} must be a non-empty JSON list")
    specs = tuple(_spec(entry, env) for entry in entries)
    if len({s.model_id for s in specs}) != len(specs):
        raise ConfigError(f"{MODELS_VARIABLE}: model ids must be unique")
    return specs


def _spec(entry: EmbeddingModelEntry, env: Env) -> ModelSpec:
    if entry.provider == "local":
        return ModelSpec(model_id=entry.id, provider="local")
    key_env = entry.api_key_env
    return ModelSpec(model_id=entry.id, provider="openai", dimension=entry.dimension or 0,
                     model=entry.model or entry.id, base_url=entry.base_url,
                     api_key_env=key_env,
                     api_key=(env.secret(key_env) if key_env else None) or SecretStr(""))
