"""Retrieval quality on a labeled set we wrote (30 documents, 30 questions): recall@5
through the public API with real chunking, the real model and real Chroma."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from llmmesh.document.v1 import document_pb2

from tests.document.helpers import upload
from tests.helpers import register_and_login

DATA = json.loads((Path(__file__).parent / "data" / "retrieval_set.json").read_text())


async def test_recall_at_5_is_at_least_0_9(document_stub, auth_stub) -> None:
    user = await register_and_login(auth_stub)
    await asyncio.gather(*(upload(document_stub, user, doc["filename"], doc["text"],
                                  collection="handbook") for doc in DATA["documents"]))
    hits, misses = 0, []
    for item in DATA["questions"]:
        found = await document_stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
            query=item["question"], k=5, collection="handbook"), metadata=user.metadata)
        top = [r.filename for r in found.results]
        assert len(top) == 5
        if item["expected"] in top:
            hits += 1
        else:
            misses.append((item["question"], item["expected"], top))
    recall = hits / len(DATA["questions"])
    assert recall >= 0.9, misses
