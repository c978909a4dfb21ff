"""The model registry: configured models as LangChain chat models, by id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from openai import DefaultAsyncHttpxClient

from services.chat.config import ModelSpec
from services.chat.extractive import Embedder, ExtractiveChatModel
from services.chat.provider_gate import GatedTransport


@dataclass(frozen=True)
class RegisteredModel:
    spec: ModelSpec
    model: BaseChatModel
    default: bool

    @property
    def gated(self) -> bool:
        """Whether the model's own HTTP requests wait for the turn's hold
        (provider_gate); others must wait before they are called."""
        return isinstance(self.model, ChatOpenAI)


class ModelRegistry:
    """Models by id, in configuration order, one of them the default."""

    def __init__(self, specs: Sequence[ModelSpec], default: str, embedder: Embedder) -> None:
        self._models = {spec.id: RegisteredModel(spec, build_model(spec, embedder),
                                                 spec.id == default) for spec in specs}
        self.default_id = default

    def get(self, model_id: str) -> RegisteredModel | None:
        return self._models.get(model_id or self.default_id)

    def all(self) -> list[RegisteredModel]:
        return list(self._models.values())

    def ids(self) -> list[str]:
        return list(self._models)

    def chain(self, model: RegisteredModel) -> list[RegisteredModel]:
        """`model`, then its fallbacks in order (services/chat/fallback.py)."""
        return [model, *(self._models[name] for name in model.spec.fallbacks)]


def build_model(spec: ModelSpec, embedder: Embedder) -> BaseChatModel:
    """A LangChain chat model for `spec`."""
    if spec.provider == "extractive":
        return ExtractiveChatModel(embedder=embedder, model_name=spec.model)
    return ChatOpenAI(model=spec.model, base_url=spec.base_url, api_key=spec.api_key,
                      stream_usage=True, timeout=spec.timeout_seconds,
                      max_retries=spec.max_retries,
                      http_async_client=DefaultAsyncHttpxClient(transport=GatedTransport()))
