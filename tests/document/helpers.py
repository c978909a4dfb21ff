"""Helpers for document tests: uploads, chunk counts straight from Chroma (embedded or
server)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings
from llmmesh.document.v1 import document_pb2

from tests.helpers import LoggedIn


async def upload(stub, user: LoggedIn, filename: str, content: bytes | str,  # type: ignore[no-untyped-def]
                 collection: str = "", content_type: str = "") -> document_pb2.Document:
    data = content.encode() if isinstance(content, str) else content
    return await stub.CreateDocument(document_pb2.CreateDocumentRequest(
        source=document_pb2.DocumentSource(filename=filename, collection=collection,
                                           content_type=content_type),
        content=data), metadata=user.metadata)


@dataclass(frozen=True)
class ChromaStore:
    """Where a document server keeps its chunks: an embedded store's directory, or a
    Chroma server (`host:port`)."""

    path: Path | None = None
    host: str | None = None

    @property
    def mode(self) -> str:
        return "server" if self.host else "embedded"

    def env(self) -> dict[str, str]:
        """The document service's settings for this store."""
        if self.host:
            return {"LLMMESH_CHROMA_HOST": self.host}
        assert self.path is not None
        return {"LLMMESH_CHROMA_PATH": str(self.path)}

    def client(self) -> ClientAPI:
        settings = Settings(anonymized_telemetry=False)  # the service's: one shared client
        if self.host:
            hostname, _, port = self.host.rpartition(":")
            return chromadb.HttpClient(host=hostname, port=int(port), settings=settings)
        assert self.path is not None
        return chromadb.PersistentClient(path=str(self.path), settings=settings)


def stored_chunks(store: ChromaStore, user_id: str) -> int:
    """How many chunks Chroma holds for a user, read from the store itself."""
    client = store.client()
    try:
        return client.get_collection(f"user_{user_id}").count()
    except Exception:  # noqa: BLE001 — no collection yet: nothing stored
        return 0
    finally:
        client.close()  # type: ignore[attr-defined]  # chromadb's Client has it


async def document_count(stub, user: LoggedIn) -> int:  # type: ignore[no-untyped-def]
    listed = await stub.ListDocuments(document_pb2.ListDocumentsRequest(page_size=100),
                                      metadata=user.metadata)
    return len(listed.documents)


PARAGRAPHS = [
    "Tidal forces arise because the Moon's gravity pulls harder on the near side of the "
    "Earth than on the far side, stretching the oceans into two bulges.",
    "Sourdough starter is a culture of wild yeast and lactic acid bacteria that is fed "
    "flour and water every day to keep it lively and sour.",
    "A bicycle chain should be cleaned with a degreaser and lubricated sparingly after "
    "riding in wet conditions to prevent rust and wear on the cassette.",
]
