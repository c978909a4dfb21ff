"""Document service configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import ConfigError, Env, RuntimeConfig

MIB = 1024 * 1024
MIN_ORPHAN_AGE_SECONDS = 900.0  # well above any pause of a live ingestion between batches


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
    # Files up to this size may be ingested within the call (CreateDocument,
    # UploadDocument, IngestDocument); larger ones go through ImportDocument.
    sync_max_bytes: int
    ingest_concurrency: int  # operations one process ingests at a time
    # A queued job whose worker has not renewed its claim for this long is taken over.
    claim_idle_seconds: float
    upload_ttl_seconds: int  # how long an upload waits for a worker
    operation_retention_seconds: int  # how long an operation is kept after it ends

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
        max_upload_bytes = env.integer("LLMMESH_DOCUMENT_MAX_UPLOAD_BYTES", 10 * MIB,
                                       minimum=1, maximum=15 * MIB)
        return cls(
            runtime=runtime,
            max_upload_bytes=max_upload_bytes,
            chunk_size=chunk_size,
            chunk_overlap=overlap,
            embed_batch_size=env.integer("LLMMESH_DOCUMENT_EMBED_BATCH_SIZE", 64, minimum=1,
                                         maximum=256),
            embedding_address=runtime.peer_address(env, "embedding"),
            embedding_model=env.text("LLMMESH_DOCUMENT_EMBEDDING_MODEL", ""),
            chroma_path=Path(env.text("LLMMESH_CHROMA_PATH",
                                      str(runtime.data_dir / "chroma"))).resolve(),
            chroma_host=_chroma_host(env.optional("LLMMESH_CHROMA_HOST")),
            # Well above any pause of a live ingestion between batches (one embedding
            # call, 120 s at most): a live ingestion is never swept.
            orphan_age_seconds=env.number("LLMMESH_DOCUMENT_ORPHAN_AGE_SECONDS", 3600.0,
                                          minimum=MIN_ORPHAN_AGE_SECONDS),
            janitor_interval_seconds=env.number("LLMMESH_DOCUMENT_JANITOR_INTERVAL_SECONDS",
                                                600.0, minimum=1.0),
            sync_max_bytes=env.integer("LLMMESH_DOCUMENT_SYNC_MAX_BYTES",
                                       min(MIB, max_upload_bytes), minimum=1,
                                       maximum=max_upload_bytes),
            ingest_concurrency=env.integer("LLMMESH_DOCUMENT_INGEST_CONCURRENCY", 2,
                                           minimum=1, maximum=64),
            claim_idle_seconds=env.number("LLMMESH_DOCUMENT_CLAIM_IDLE_SECONDS", 60.0,
                                          minimum=0.5),
            upload_ttl_seconds=env.integer("LLMMESH_DOCUMENT_UPLOAD_TTL_SECONDS", 86400,
                                           minimum=60),
            operation_retention_seconds=env.integer(
                "LLMMESH_DOCUMENT_OPERATION_RETENTION_SECONDS", 7 * 86400, minimum=60),
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
