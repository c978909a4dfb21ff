"""Bad chat requests answer INVALID_ARGUMENT with every field violation at once,
before anything is reserved or sent to a model."""

from __future__ import annotations

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2

from tests.chat.openai_server import OpenAIServer
from tests.chat.streams import usage
from tests.helpers import LoggedIn, field_violations


def _request(message: str = "hello", **options) -> chat_pb2.ChatRequest:  # type: ignore[no-untyped-def]
    return chat_pb2.ChatRequest(message=message, options=chat_pb2.ChatOptions(**options))


@pytest.mark.parametrize(("request_", "field", "says"), [
    (_request(""), "message", "must not be empty"),
    (_request("   \n"), "message", "must not be empty"),
    (_request("x" * 32_769), "message", "at most 32768 characters"),
    (_request(temperature=2.5), "options.temperature", "between 0 and 2"),
    (_request(temperature=-0.1), "options.temperature", "between 0 and 2"),
    (_request(temperature=float("nan")), "options.temperature", "between 0 and 2"),
    (_request(max_tokens=0), "options.max_tokens", "between 1 and 256"),
    (_request(max_tokens=257), "options.max_tokens", "between 1 and 256"),
    (_request(model="slow", max_tokens=65), "options.max_tokens", "between 1 and 64"),
    (_request(model="gpt-9"), "options.model",
     "unknown model 'gpt-9'; available: echo, slow, down, extractive"),
    (_request(rag_top_k=21, use_rag=True), "options.rag_top_k", "between 1 and 20"),
    (_request(documents=["documents/a"]), "options.use_rag", "must be true"),
    (_request(use_rag=True, documents=["files/a"]), "options.documents[0]",
     "documents/{document}"),
    (_request(use_rag=True, documents=["documents/" + "0" * 32, "documents/not-an-id"]),
     "options.documents[1]", "documents/{document}"),  # the document service's ids only
    (_request(use_rag=True, collection="no spaces"), "options.collection", "letters"),
    (chat_pb2.ChatRequest(message="hi", conversation="chats/1"), "conversation",
     "conversations/{conversation}"),
], ids=["empty", "blank", "too-long", "hot", "cold", "nan", "zero-tokens", "many-tokens",
        "model-range", "unknown-model", "top-k", "scope-without-rag", "document-name",
        "document-id", "collection", "conversation-name"])
async def test_invalid_requests_name_the_field(chat_stub, model_server: OpenAIServer,
                                               alice: LoggedIn, request_, field: str,
                                               says: str) -> None:  # type: ignore[no-untyped-def]
    for call in (chat_stub.Chat(request_, metadata=alice.metadata),
                 _drain(chat_stub.StreamChat(chat_pb2.StreamChatRequest(
                     message=request_.message, conversation=request_.conversation,
                     options=request_.options), metadata=alice.metadata))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in field_violations(caught.value)[field]
    assert model_server.seen == []


async def _drain(call) -> None:  # type: ignore[no-untyped-def]
    async for _ in call:
        pass


async def test_every_violation_is_reported_at_once(chat_stub, auth_stub, alice: LoggedIn) -> None:
    before = await usage(auth_stub, alice)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.Chat(_request("", temperature=3, model="nope"), metadata=alice.metadata)
    assert set(field_violations(caught.value)) == {"message", "options.temperature",
                                                   "options.model"}
    after = await usage(auth_stub, alice)
    assert (after.tokens_used, after.tokens_reserved) == (before.tokens_used, 0)


async def test_a_boundary_message_is_accepted(chat_stub, alice: LoggedIn) -> None:
    answer = await chat_stub.Chat(_request("y" * 32_768, max_tokens=256, temperature=2.0),
                                  metadata=alice.metadata)
    assert answer.message.content.startswith("You said: yyy")


async def test_chat_needs_a_user_token(chat_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.Chat(_request())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
