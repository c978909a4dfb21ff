"""Conversation memory: the last N turns reach the model, paged lists, deletion,
retention, and other users' conversations answering NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2

from services.chat.conversations import ConversationStore, MessageRecord
from services.runtime.redis_client import redis_client
from tests.chat.conftest import HISTORY_TURNS
from tests.chat.openai_server import OpenAIServer
from tests.chat.streams import stream_chat
from tests.helpers import LoggedIn, error_info, field_violations


async def test_the_last_n_turns_go_to_the_model(chat_stub, model_server: OpenAIServer,
                                                alice: LoggedIn) -> None:
    first = await stream_chat(chat_stub, alice, "turn 0")
    for n in range(1, HISTORY_TURNS + 2):
        await stream_chat(chat_stub, alice, f"turn {n}", first.conversation)
    sent = model_server.seen[-1].body["messages"]
    assert sent[0]["role"] == "system"
    history = [(m["role"], m["content"]) for m in sent[1:-1]]
    expected = []
    for n in range(2, HISTORY_TURNS + 2):  # turns 0 and 1 fell out of the window
        expected += [("user", f"turn {n - 1}"), ("assistant", f"You said: turn {n - 1}")]
    assert history == expected[-2 * HISTORY_TURNS:]
    assert sent[-1] == {"role": "user", "content": f"turn {HISTORY_TURNS + 1}"}


async def test_get_list_messages_and_delete(chat_stub, alice: LoggedIn) -> None:
    first = await stream_chat(chat_stub, alice, "  What is\nthe capital of France?  ")
    await stream_chat(chat_stub, alice, "and of Spain?", first.conversation)
    got = await chat_stub.GetConversation(chat_pb2.GetConversationRequest(
        name=first.conversation), metadata=alice.metadata)
    assert got.name == first.conversation and got.message_count == 4
    assert got.title == "What is the capital of France?"
    assert got.update_time.ToMilliseconds() >= got.create_time.ToMilliseconds() > 0
    listed = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=first.conversation, page_size=3), metadata=alice.metadata)
    rest = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=first.conversation, page_size=3, page_token=listed.next_page_token),
        metadata=alice.metadata)
    messages = [*listed.messages, *rest.messages]
    assert [m.role for m in messages] == [chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT] * 2
    assert messages[2].content == "and of Spain?" and rest.next_page_token == ""
    assert messages[1].model == "echo" and messages[1].usage.total_tokens > 0
    assert not messages[0].model and not messages[0].HasField("usage")
    assert len({m.name for m in messages}) == 4

    await chat_stub.DeleteConversation(chat_pb2.DeleteConversationRequest(
        name=first.conversation), metadata=alice.metadata)
    for call in (chat_stub.GetConversation(chat_pb2.GetConversationRequest(
                     name=first.conversation), metadata=alice.metadata),
                 chat_stub.DeleteConversation(chat_pb2.DeleteConversationRequest(
                     name=first.conversation), metadata=alice.metadata),
                 chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
                     parent=first.conversation), metadata=alice.metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_conversations_list_newest_first_across_pages(chat_stub,
                                                            alice: LoggedIn) -> None:
    names = [(await stream_chat(chat_stub, alice, f"topic {n}")).conversation for n in range(5)]
    await stream_chat(chat_stub, alice, "back to topic 1", names[1])  # now the newest
    expected = [names[1], names[4], names[3], names[2], names[0]]
    seen, token = [], ""
    for _ in range(5):
        page = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(
            page_size=2, page_token=token), metadata=alice.metadata)
        seen += [c.name for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    big = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(page_size=1000),
                                            metadata=alice.metadata)
    assert [c.name for c in big.conversations] == expected


async def test_another_users_conversation_is_not_found(chat_stub, alice: LoggedIn,
                                                       bob: LoggedIn) -> None:
    mine = await stream_chat(chat_stub, alice, "private thoughts")
    calls = [
        chat_stub.GetConversation(chat_pb2.GetConversationRequest(name=mine.conversation),
                                  metadata=bob.metadata),
        chat_stub.ListMessages(chat_pb2.ListMessagesRequest(parent=mine.conversation),
                               metadata=bob.metadata),
        chat_stub.DeleteConversation(chat_pb2.DeleteConversationRequest(
            name=mine.conversation), metadata=bob.metadata),
        chat_stub.Chat(chat_pb2.ChatRequest(message="hi", conversation=mine.conversation),
                       metadata=bob.metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == "NOT_FOUND"
    listed = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(),
                                               metadata=bob.metadata)
    assert not listed.conversations
    still = await chat_stub.GetConversation(chat_pb2.GetConversationRequest(
        name=mine.conversation), metadata=alice.metadata)
    assert still.message_count == 2


@pytest.mark.parametrize(("request_", "field"), [
    (chat_pb2.ListConversationsRequest(page_token="garbage!"), "page_token"),
    (chat_pb2.ListConversationsRequest(page_size=-1), "page_size"),
])
async def test_bad_page_requests_are_invalid(chat_stub, alice: LoggedIn, request_,
                                             field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.ListConversations(request_, metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def test_a_page_token_of_one_conversation_is_refused_by_another(
        chat_stub, alice: LoggedIn) -> None:
    one = await stream_chat(chat_stub, alice, "one")
    await stream_chat(chat_stub, alice, "one more", one.conversation)
    two = await stream_chat(chat_stub, alice, "two")
    page = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=one.conversation, page_size=1), metadata=alice.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
            parent=two.conversation, page_size=1, page_token=page.next_page_token),
            metadata=alice.metadata)
    assert field_violations(caught.value) == {
        "page_token": "is not a next_page_token of this listing"}


async def test_malformed_names_are_invalid(chat_stub, alice: LoggedIn) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.GetConversation(chat_pb2.GetConversationRequest(name="conversations/x"),
                                        metadata=alice.metadata)
    assert field_violations(caught.value) == {"name": "must be conversations/{conversation}"}


async def test_turns_extend_retention_and_expired_ones_leave_the_index(redis_server) -> None:
    redis = redis_client(redis_server.url)
    store = ConversationStore(redis, retention_seconds=60)
    question = MessageRecord("q", "user", "hello", 1_000)
    answer = MessageRecord("a", "assistant", "hi", 1_001, model="echo")
    try:
        assert await store.append_turn("u-ret", "c1", is_new=True, question=question,
                                       answer=answer)
        for key in ("chat:{u-ret}:convs", "chat:{u-ret}:conv:c1", "chat:{u-ret}:conv:c1:msgs"):
            assert 55 <= await redis.ttl(key) <= 60
        # A conversation idle past retention (its keys expired) leaves the index on list.
        await redis.delete("chat:{u-ret}:conv:c1", "chat:{u-ret}:conv:c1:msgs")
        records, more = await store.list("u-ret", 10, None)
        assert records == [] and not more
        assert await redis.zcard("chat:{u-ret}:convs") == 0
        # A continued conversation that disappeared meanwhile is not resurrected.
        assert not await store.append_turn("u-ret", "c1", is_new=False, question=question,
                                           answer=answer)
        assert not await redis.exists("chat:{u-ret}:conv:c1")
    finally:
        await redis.aclose()
