"""Distributed traces end to end: one streamed RAG chat, arriving with the edge's W3C
`traceparent`, makes one trace through chat → document → embedding (and the model call,
retrieval, Chroma and the quota calls), with the right parent links; each service's log
line names the request id and the trace."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.chat.config import ChatConfig
from services.chat.server import create_server
from services.runtime.config import Env
from services.runtime.logs import JsonFormatter
from tests.chat.openai_server import OpenAIServer
from tests.conftest import mesh_env
from tests.document.helpers import PARAGRAPHS, upload
from tests.helpers import LoggedIn

EDGE_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
EDGE_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{EDGE_TRACE_ID:032x}-{EDGE_SPAN_ID:016x}-01"
REQUEST_ID = "trace-test-request-1"

CHAT = "llmmesh.chat.v1.ChatService/StreamChat"
SEARCH = "llmmesh.document.v1.DocumentService/SearchDocuments"
EMBED = "llmmesh.embedding.v1.EmbeddingService/Embed"


@pytest.fixture(scope="module")
async def rag_chat(redis_server, data_dir, auth_address, document_address,  # type: ignore[no-untyped-def]
                   embedding_address, model_server: OpenAIServer
                   ) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    models = [{"id": "echo", "provider": "openai", "model": "echo-1",
               "base_url": model_server.base_url, "api_key": "k", "default": True}]
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


class _JsonLines(logging.Handler):
    """Each RPC log line as the services' JSON formatter writes it, at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def rpc_log() -> Iterator[_JsonLines]:
    logger = logging.getLogger("llmmesh.rpc")
    handler, level = _JsonLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind is kind]
    assert len(found) == 1, f"{len(found)} {kind.name} spans named {name}: " + \
        ", ".join(f"{s.name}({s.kind.name})" for s in spans)
    return found[0]


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _tree(spans: Sequence[ReadableSpan]) -> str:
    """The trace as an indented tree (shown when an assertion fails)."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {_id(s) for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = _parent(span)
        children.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            lines.append("  " * depth + f"{span.name} [{span.kind.name.lower()}]")
            walk(_id(span), depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def _trace(exporter: InMemorySpanExporter, names: set[str]) -> list[ReadableSpan]:
    """The edge trace's spans once every one of `names` has ended (client spans end
    just after their call does)."""
    for _ in range(100):
        spans = [s for s in exporter.get_finished_spans()
                 if s.context is not None and s.context.trace_id == EDGE_TRACE_ID]
        if names <= {s.name for s in spans}:
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"missing spans {names - {s.name for s in spans}}:\n{_tree(spans)}")


async def test_one_rag_chat_is_one_trace_through_every_hop(
        rag_chat, document_stub, alice: LoggedIn, model_server: OpenAIServer,  # type: ignore[no-untyped-def]
        traces: InMemorySpanExporter, rpc_log: _JsonLines) -> None:
    await upload(document_stub, alice, "notes.txt", "\n\n".join(PARAGRAPHS), collection="traced")
    request = chat_pb2.StreamChatRequest(
        message="Why does the ocean have two tidal bulges?",
        options=chat_pb2.ChatOptions(model="echo", use_rag=True, collection="traced"))
    metadata = (*alice.metadata, ("x-request-id", REQUEST_ID), ("traceparent", TRACEPARENT))
    events = [event async for event in rag_chat.StreamChat(request, metadata=metadata)]
    done = events[-1].done
    assert events[-1].WhichOneof("event") == "done" and done.usage.completion_tokens > 0
    assert any(e.WhichOneof("event") == "sources" and e.sources.sources for e in events)

    spans = await _trace(traces, {CHAT, SEARCH, EMBED, "chat echo-1", "retrieval chroma",
                                  "query chroma"})
    tree = _tree(spans)
    chat = _one(spans, CHAT, SpanKind.SERVER)
    # Chat continues the edge's trace: its server span is the child of Envoy's span.
    assert chat.parent is not None and chat.parent.is_remote, tree
    assert _parent(chat) == EDGE_SPAN_ID, tree
    search_call = _one(spans, SEARCH, SpanKind.CLIENT)
    search = _one(spans, SEARCH, SpanKind.SERVER)
    retrieval = _one(spans, "retrieval chroma", SpanKind.INTERNAL)
    chroma = _one(spans, "query chroma", SpanKind.CLIENT)
    embed_call = _one(spans, EMBED, SpanKind.CLIENT)
    embed = _one(spans, EMBED, SpanKind.SERVER)
    embeddings = [s for s in spans if s.name.startswith("embeddings ")]
    model = _one(spans, "chat echo-1", SpanKind.CLIENT)
    assert _parent(search_call) == _id(chat), tree
    assert _parent(search) == _id(search_call), tree
    assert _parent(retrieval) == _id(search), tree
    assert _parent(embed_call) == _id(retrieval), tree  # the query's vector
    assert _parent(chroma) == _id(retrieval), tree
    assert _parent(embed) == _id(embed_call), tree
    assert len(embeddings) == 1 and _parent(embeddings[0]) == _id(embed), tree
    assert _parent(model) == _id(chat), tree
    # The quota calls (a plain channel: no client span) go on in auth, under chat's span.
    reserve = _one(spans, "llmmesh.auth.v1.QuotaService/ReserveTokens", SpanKind.SERVER)
    assert _parent(reserve) == _id(chat), tree

    # GenAI semantic conventions on the model call and the embeddings.
    attributes = dict(model.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "echo-1"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == done.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == done.usage.completion_tokens
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    embedded = dict(embeddings[0].attributes or {})
    assert embedded["gen_ai.operation.name"] == "embeddings"
    assert int(embedded["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    assert dict(retrieval.attributes or {})["gen_ai.operation.name"] == "retrieval"
    assert dict(chroma.attributes or {})["db.system.name"] == "chromadb"
    rpc = dict(chat.attributes or {})
    assert (rpc["rpc.system"], rpc["rpc.service"], rpc["rpc.method"]) == (
        "grpc", "llmmesh.chat.v1.ChatService", "StreamChat")
    assert rpc["rpc.grpc.status_code"] == 0 and rpc["llmmesh.request_id"] == REQUEST_ID

    # Each service's RPC log line: the request id, the trace id and its own server span.
    trace_id = f"{EDGE_TRACE_ID:032x}"
    for server in (chat, search, embed):
        (line,) = [entry for entry in rpc_log.lines if entry.get("method") == f"/{server.name}"
                   and entry.get("trace_id") == trace_id]
        assert line["request_id"] == REQUEST_ID, line
        assert line["span_id"] == f"{_id(server):016x}", line


async def test_without_a_provider_nothing_is_traced_or_logged(
        rag_chat, alice: LoggedIn, rpc_log: _JsonLines) -> None:
    request = chat_pb2.StreamChatRequest(message="hello", options=chat_pb2.ChatOptions())
    metadata = (*alice.metadata, ("traceparent", TRACEPARENT))
    events = [event async for event in rag_chat.StreamChat(request, metadata=metadata)]
    assert events[-1].WhichOneof("event") == "done"
    (line,) = [entry for entry in rpc_log.lines if entry.get("method") == f"/{CHAT}"]
    assert "trace_id" not in line and "span_id" not in line
