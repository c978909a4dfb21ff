"""Document service configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import ConfigError, Env, RuntimeConfig

MIB = 1024 * 1024
MIN_ORPHAN_AGE_SECONDS = 900.0  # the gateway's upload timeout


@dataclass(frozen=True)
class DocumentConfig:
    """Everything the document service reads from the environment."""

    runtime: RuntimeConfig
    max_upload_bytes: int
    chunk_size: int
    chunk_overlap: int
    embed_batch_size: int
    embedding_address: str
    embedding_model: str  # "" = the embedding service's default
    chroma_path: Path
    chroma_host: str | None  # a Chroma server (host:port) instead of the embedded store
    # Chunks of an uncommitted document this old are orphans (a killed ingestion's).
    orphan_age_seconds: float
    janitor_interval_seconds: float  # how often the orphan janitor sweeps

    @classmethod
    def from_env(cls, env: Env | None = None) -> DocumentConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("document", env)
        chunk_size = env.integer("LLMMESH_DOCUMENT_CHUNK_SIZE", 1000, minimum=100,
                                 maximum=8000)
        overlap = env.integer("LLMMESH_DOCUMENT_CHUNK_OVERLAP", 200, minimum=0)
        if overlap >= chunk_size:
            raise ConfigError("LLMMESH_DOCUMENT_CHUNK_OVERLAP must be smaller than "
                              "LLMMESH_DOCUMENT_CHUNK_SIZE")
        return cls(
            runtime=runtime,
            max_upload_bytes=env.integer("LLMMESH_DOCUMENT_MAX_UPLOAD_BYTES", 10 * MIB,
                                         minimum=1, maximum=15 * MIB),
            chunk_size=chunk_size,
            chunk_overlap=overlap,
            embed_batch_size=env.integer("LLMMESH_DOCUMENT_EMBED_BATCH_SIZE", 64, minimum=1,
                                         maximum=256),
            embedding_address=runtime.peer_address(env, "embedding"),
            embedding_model=env.text("LLMMESH_DOCUMENT_EMBEDDING_MODEL", ""),
            chroma_path=Path(env.text("LLMMESH_CHROMA_PATH",
                                      str(runtime.data_dir / "chroma"))).resolve(),
            chroma_host=_chroma_host(env.optional("LLMMESH_CHROMA_HOST")),
            # Well above the 15-minute upload timeout: a live ingestion is never swept.
            orphan_age_seconds=env.number("LLMMESH_DOCUMENT_ORPHAN_AGE_SECONDS", 3600.0,
                                          minimum=MIN_ORPHAN_AGE_SECONDS),
            janitor_interval_seconds=env.number("LLMMESH_DOCUMENT_JANITOR_INTERVAL_SECONDS",
                                                600.0, minimum=1.0),
        )


def _chroma_host(value: str | None) -> str | None:
    """`host:port` of a Chroma server (plain HTTP, as `chroma run` serves), checked now so
    a typo stops the service at start-up with a clear message."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or "/" in value or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"LLMMESH_CHROMA_HOST must be host:port (e.g. chroma:8000), "
                          f"not {value!r}")
    return value
