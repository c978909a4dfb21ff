"""Kept only for services/document/server.py's import: the embedding client is
services/runtime/embedding_client.py (shared with chat). Import it from there and
delete this module."""

from services.runtime.embedding_client import EmbeddingClient

__all__ = ["EmbeddingClient"]
