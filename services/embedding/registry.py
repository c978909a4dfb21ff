"""The embedding models a server offers, and the checks every Embed call passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.embedding.models import Embedded, EmbeddingModel
from services.runtime.errors import FieldViolation, check_fields


@dataclass(frozen=True)
class EmbedResult:
    model: EmbeddingModel
    embedded: Embedded
    characters: int


class ModelRegistry:
    """Named models, one of them the default."""

    def __init__(self, models: Sequence[EmbeddingModel], default_model: str, *,
                 max_texts: int, max_chars: int) -> None:
        self._models = {model.model_id: model for model in models}
        self.default_model = default_model
        self._max_texts = max_texts
        self._max_chars = max_chars

    def models(self) -> list[EmbeddingModel]:
        return list(self._models.values())

    def resolve(self, model_id: str) -> EmbeddingModel:
        """The named model (or the default); INVALID_ARGUMENT listing the known ones."""
        found = self._models.get(model_id or self.default_model)
        if found is None:
            check_fields([FieldViolation(
                "model", f"unknown model {model_id!r}; available: "
                         f"{', '.join(sorted(self._models))}")])
        assert found is not None
        return found

    async def embed(self, texts: Sequence[str], model_id: str = "") -> EmbedResult:
        violations: list[FieldViolation | None] = []
        if not texts:
            violations.append(FieldViolation("texts", "at least one text is required"))
        elif len(texts) > self._max_texts:
            violations.append(FieldViolation(
                "texts", f"at most {self._max_texts} texts per call, got {len(texts)}"))
        for index, text in enumerate(texts[: self._max_texts]):
            if not text.strip():
                violations.append(FieldViolation(f"texts[{index}]", "must not be blank"))
            elif len(text) > self._max_chars:
                violations.append(FieldViolation(
                    f"texts[{index}]", f"at most {self._max_chars} characters, got {len(text)}"))
        check_fields(violations[:20])  # enough to act on, not a wall of errors
        model = self.resolve(model_id)
        embedded = await model.embed(texts)
        return EmbedResult(model=model, embedded=embedded,
                           characters=sum(len(t) for t in texts))

    async def close(self) -> None:
        for model in self._models.values():
            await model.close()
