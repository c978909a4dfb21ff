"""Embedding service configuration: the model registry and request limits."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import ConfigError, Env, RuntimeConfig

LOCAL_MODEL_ID = "all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSpec:
    """One configured embedding model."""

    model_id: str
    provider: str  # "local" | "openai"
    dimension: int = 0  # known from the model for local ones
    model: str = ""  # provider's model name (openai)
    base_url: str = ""
    api_key_env: str = ""  # name of the variable holding the key (keys never sit in specs)
    api_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class EmbeddingConfig:
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
        default = env.str("LLMMESH_EMBEDDING_DEFAULT_MODEL", models[0].model_id)
        if default not in {m.model_id for m in models}:
            raise ConfigError(f"LLMMESH_EMBEDDING_DEFAULT_MODEL {default!r} is not a "
                              "configured model")
        return cls(
            runtime=runtime,
            models=models,
            default_model=default,
            max_texts_per_call=env.int("LLMMESH_EMBEDDING_MAX_TEXTS", 256, minimum=1),
            max_chars_per_text=env.int("LLMMESH_EMBEDDING_MAX_CHARS", 8192, minimum=1),
            # Small model batches: on CPU, long texts embed as fast one by one as 32 at a
            # time (measured), and onnxruntime's arena keeps the peak (327 vs 633 MiB).
            batch_size=env.int("LLMMESH_EMBEDDING_BATCH_SIZE", 8, minimum=1, maximum=1024),
            local_runtime=_runtime(env),
            model_dir=Path(env.str("LLMMESH_EMBEDDING_MODEL_DIR", str(_default_model_dir()))),
            threads=env.int("LLMMESH_EMBEDDING_THREADS", os.cpu_count() or 1, minimum=1,
                            maximum=256),
        )


def _runtime(env: Env) -> str:
    runtime = env.str("LLMMESH_EMBEDDING_LOCAL_RUNTIME", "auto").lower()
    if runtime not in {"auto", "onnx", "torch"}:
        raise ConfigError("LLMMESH_EMBEDDING_LOCAL_RUNTIME must be auto, onnx or torch")
    return runtime


def _default_model_dir() -> Path:
    from services.embedding.onnx_model import default_model_dir

    return default_model_dir()


def _models(env: Env) -> tuple[ModelSpec, ...]:
    """`LLMMESH_EMBEDDING_MODELS`: a JSON list of {id, provider, dimension, model,
    base_url, api_key_env}; the bundled local model when unset."""
    raw = env.optional("LLMMESH_EMBEDDING_MODELS")
    if raw is None:
        return (ModelSpec(model_id=LOCAL_MODEL_ID, provider="local"),)
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list) or not entries:
            raise ValueError("expected a non-empty JSON list")
        specs = tuple(_spec(entry, env) for entry in entries)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"LLMMESH_EMBEDDING_MODELS: {error}") from None
    if len({s.model_id for s in specs}) != len(specs):
        raise ConfigError("LLMMESH_EMBEDDING_MODELS: model ids must be unique")
    return specs


def _spec(entry: dict[str, object], env: Env) -> ModelSpec:
    provider = str(entry["provider"])
    model_id = str(entry["id"])
    if provider == "local":
        return ModelSpec(model_id=model_id, provider="local")
    if provider != "openai":
        raise ValueError(f"unknown provider {provider!r} (local or openai)")
    dimension = int(entry["dimension"])  # type: ignore[call-overload]
    if dimension <= 0:
        raise ValueError(f"{model_id}: dimension must be positive")
    key_env = str(entry.get("api_key_env", ""))
    return ModelSpec(model_id=model_id, provider="openai", dimension=dimension,
                     model=str(entry.get("model", model_id)),
                     base_url=str(entry["base_url"]), api_key_env=key_env,
                     api_key=(env.optional(key_env) or "") if key_env else "")
