"""The local model's two runtimes: the ONNX export (the default) gives the vectors
sentence-transformers on torch gives, and the service falls back to torch when the
export cannot be had."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.embedding.config import EmbeddingConfig
from services.embedding.models import LocalModel, load_model
from services.embedding.onnx_model import MODEL_FILE, OnnxMiniLM, default_model_dir
from services.runtime.config import ConfigError, Env

TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by twelve percent.",
         "word " * 400,  # longer than the model's 256 tokens: truncated alike
         "ünïcödé and emoji 🚀 survive tokenisation"]


@pytest.fixture(scope="module")
def torch_model() -> LocalModel:
    return LocalModel("torch", batch_size=8)


async def test_onnx_and_torch_give_the_same_vectors(torch_model: LocalModel) -> None:
    onnx = OnnxMiniLM("onnx", default_model_dir() / MODEL_FILE, batch_size=2, threads=2)
    try:
        from_onnx = await onnx.embed(TEXTS)
        from_torch = await torch_model.embed(TEXTS)
    finally:
        await onnx.close()
        await torch_model.close()
    assert onnx.dimension == torch_model.dimension == 384
    cosines = (np.array(from_onnx.vectors) * np.array(from_torch.vectors)).sum(axis=1)
    assert cosines.min() > 0.9999
    assert from_onnx.tokens == from_torch.tokens  # same tokenizer, same truncation


def _config(tmp_path: Path, **env: str) -> EmbeddingConfig:
    return EmbeddingConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path), **env}))


def test_auto_uses_the_export_set_up_made(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.local_runtime == "auto" and (config.model_dir / MODEL_FILE).exists()
    assert isinstance(load_model(config.models[0], config), OnnxMiniLM)


def test_onnx_required_but_missing_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import services.embedding.onnx_model as onnx_model

    monkeypatch.setattr(onnx_model, "ensure_exported", lambda _: None)  # no torch/onnx
    config = _config(tmp_path, LLMMESH_EMBEDDING_LOCAL_RUNTIME="onnx",
                     LLMMESH_EMBEDDING_MODEL_DIR=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no ONNX export"):
        load_model(config.models[0], config)


def test_bad_runtime_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auto, onnx or torch"):
        _config(tmp_path, LLMMESH_EMBEDDING_LOCAL_RUNTIME="tensorrt")


async def test_a_missing_export_is_made_on_first_need(tmp_path: Path) -> None:
    from services.embedding.onnx_model import ensure_exported

    made = ensure_exported(tmp_path / "models")
    assert made == tmp_path / "models" / MODEL_FILE and made.stat().st_size > 50_000_000
    fresh = OnnxMiniLM("fresh", made, batch_size=4, threads=1)
    shipped = OnnxMiniLM("shipped", default_model_dir() / MODEL_FILE, batch_size=4, threads=1)
    try:
        a, b = (await fresh.embed(TEXTS[:2])), (await shipped.embed(TEXTS[:2]))
    finally:
        await fresh.close()
        await shipped.close()
    assert (np.array(a.vectors) * np.array(b.vectors)).sum(axis=1).min() > 0.99999
