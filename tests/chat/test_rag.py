"""RAG end to end with real documents: the document service searches with the
caller's identity, sources stream before the end, and the offline extractive model
quotes the most relevant sentences through the real embedding service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.config import ChatConfig
from services.chat.extractive import NO_MATCH_ANSWER, NO_SOURCES_ANSWER, PREAMBLE
from services.chat.server import create_server
from services.runtime.config import Env
from tests.chat.openai_server import OpenAIServer
from tests.chat.streams import stream_chat
from tests.conftest import mesh_env
from tests.document.helpers import PARAGRAPHS, upload
from tests.helpers import LoggedIn


@pytest.fixture(scope="module")
async def rag_stub(redis_server, data_dir, auth_address, document_address, embedding_address,
                   model_server: OpenAIServer) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    """A chat server whose default is the extractive model, with the real peers."""
    models = [{"id": "echo", "provider": "openai", "base_url": model_server.base_url,
               "api_key": "k"}]
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_DOCUMENT_ADDRESS=document_address,
                   LLMMESH_EMBEDDING_ADDRESS=embedding_address,
                   LLMMESH_CHAT_MODELS=json.dumps(models))
    server = create_server(ChatConfig.from_env(Env(env)))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield chat_pb2_grpc.ChatServiceStub(channel)
    finally:
        await server.stop(0)


@pytest.fixture
async def notes(document_stub, alice: LoggedIn):  # type: ignore[no-untyped-def]
    return await upload(document_stub, alice, "notes.txt", "\n\n".join(PARAGRAPHS),
                        collection="home")


async def test_the_extractive_model_quotes_the_relevant_sentence_with_sources(
        rag_stub, notes, alice: LoggedIn) -> None:
    seen = await stream_chat(rag_stub, alice, "Why does the ocean have two tidal bulges?",
                             use_rag=True)
    assert seen.start is not None and seen.start.model == "extractive"
    assert seen.kinds[0] == "start" and seen.kinds[-2:] == ["sources", "done"]
    assert set(seen.kinds[1:-2]) == {"delta"}
    assert seen.text.startswith(PREAMBLE)
    first_quote = seen.text.split("\n> ")[1].split("\n")[0]
    assert "Moon's gravity" in first_quote and first_quote.endswith("[1]")
    assert "[1] notes.txt, chunk 0" in seen.text
    source = seen.sources[0]
    assert (source.document, source.filename, source.chunk_index) == (notes.name, "notes.txt", 0)
    assert 0 < source.score <= 1.0001 and source.snippet.startswith("Tidal forces")
    assert seen.done is not None and seen.done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert seen.done.usage.completion_tokens > 0 and seen.done.usage.prompt_tokens > 0
    stored = await rag_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=seen.conversation), metadata=alice.metadata)
    assert stored.messages[1].content == seen.text
    assert [s.document for s in stored.messages[1].sources] == [s.document for s in seen.sources]


async def test_the_extractive_model_is_honest_without_sources(rag_stub, alice: LoggedIn,
                                                              notes) -> None:
    without_rag = await stream_chat(rag_stub, alice, "Why are there tides?")
    assert without_rag.text == NO_SOURCES_ANSWER and not without_rag.sources
    assert "sources" not in without_rag.kinds
    unrelated = await stream_chat(rag_stub, alice, "Who won the 1998 football world cup final?",
                                  use_rag=True, collection="home")
    assert unrelated.text.startswith(NO_MATCH_ANSWER)


async def test_retrieval_uses_the_callers_identity(rag_stub, alice: LoggedIn, bob: LoggedIn,
                                                   notes) -> None:
    seen = await stream_chat(rag_stub, bob, "Why are there two tidal bulges?", use_rag=True)
    assert seen.kinds[-2:] == ["sources", "done"] and seen.sources == []
    assert seen.text == NO_SOURCES_ANSWER


async def test_a_generative_model_gets_the_sources_in_its_prompt(
        rag_stub, document_stub, model_server: OpenAIServer, alice: LoggedIn, notes) -> None:
    other = await upload(document_stub, alice, "bread.txt",
                         "Rye bread needs a long proof and a sour starter to rise well.",
                         collection="kitchen")
    seen = await stream_chat(rag_stub, alice, "How should I proof bread?", model="echo",
                             use_rag=True, documents=[other.name], rag_top_k=2)
    assert [s.document for s in seen.sources] == [other.name]
    system = model_server.seen[-1].body["messages"][0]
    assert system["role"] == "system"
    assert "[1] bread.txt, chunk 0\nRye bread needs a long proof" in system["content"]
    assert "Tidal" not in system["content"]
    scoped = await stream_chat(rag_stub, alice, "How should I proof bread?", model="echo",
                               use_rag=True, collection="home")
    assert {s.filename for s in scoped.sources} == {"notes.txt"}
