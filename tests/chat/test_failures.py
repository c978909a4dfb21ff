"""Provider errors, cancellation and deadlines: clear statuses, errors inside started
streams, the provider's HTTP request closed once the disconnect grace period passed with
no one reading the turn (test_resume.py: a resumer keeps it), nothing half-written."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from llmmesh.chat.v1 import chat_pb2

from services.chat.conversations import ConversationStore, MessageRecord
from tests.chat.conftest import DISCONNECT_GRACE_SECONDS
from tests.chat.openai_server import OpenAIServer, Script
from tests.chat.streams import stream_chat, usage
from tests.helpers import LoggedIn, error_info, eventually, rich_status

# Past the disconnect grace period (a streamed turn outlives its caller that long, for a
# resumer): typically 3-6 ms here (plus one turn heartbeat, 50 ms in these tests); the
# bound leaves room for a loaded CI machine and still catches a request left open (the
# scripted answer would run for 4 s).
CANCEL_BUDGET_SECONDS = 0.3


def _retry_seconds(error: grpc.aio.AioRpcError) -> float:
    for packed in rich_status(error).details:
        if packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            packed.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


@pytest.mark.parametrize(("script", "model", "code", "reason"), [
    (Script(status=429, retry_after="7"), "echo", grpc.StatusCode.RESOURCE_EXHAUSTED,
     "MODEL_RATE_LIMITED"),
    (Script(status=500), "echo", grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE"),
    (Script(status=503), "echo", grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE"),
    (Script(), "down", grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE"),
    (Script(first_token_delay=1.0), "slow", grpc.StatusCode.DEADLINE_EXCEEDED,
     "MODEL_TIMEOUT"),
    (Script(fail_after_tokens=2), "echo", grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE"),
], ids=["429", "500", "503", "refused", "slow", "dropped"])
async def test_provider_errors_map_to_clear_statuses(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn, script: Script,
        model: str, code: grpc.StatusCode, reason: str) -> None:
    model_server.reset(script)
    before = await usage(auth_stub, alice)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.Chat(chat_pb2.ChatRequest(
            message="tell me a story about a lighthouse keeper",
            options=chat_pb2.ChatOptions(model=model)), metadata=alice.metadata)
    assert caught.value.code() == code
    assert error_info(caught.value).reason == reason
    assert error_info(caught.value).metadata["model"] == model
    if script.status == 429:
        assert _retry_seconds(caught.value) == 7.0
    if code == grpc.StatusCode.UNAVAILABLE:
        assert _retry_seconds(caught.value) > 0
    after = await eventually(lambda: usage(auth_stub, alice), lambda u: u.tokens_reserved == 0,
                             what="the detached settlement")
    if script.fail_after_tokens is None:
        assert after.tokens_used == before.tokens_used  # nothing generated, nothing charged
    listed = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(),
                                               metadata=alice.metadata)
    assert not listed.conversations  # a failed turn stores nothing


async def test_an_error_after_the_start_travels_inside_the_stream(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(Script(status=429, retry_after="3"))
    seen = await stream_chat(chat_stub, alice, "hello")
    assert seen.kinds == ["start", "error"]
    assert seen.error.code == code_pb2.RESOURCE_EXHAUSTED
    kinds = {packed.TypeName() for packed in seen.error.details}
    assert {"google.rpc.ErrorInfo", "google.rpc.RetryInfo"} <= kinds
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.GetConversation(chat_pb2.GetConversationRequest(
            name=seen.conversation), metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def _disconnect_delay(model_server: OpenAIServer, since: float) -> float:
    async def last_disconnect() -> float | None:
        return model_server.seen[-1].disconnected

    disconnected = await eventually(last_disconnect, lambda at: at is not None, within=2,
                                    what="the provider seeing the client go away")
    assert disconnected is not None
    return disconnected - since


async def test_a_cancelled_stream_closes_the_provider_request_and_stores_nothing(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    first = await stream_chat(chat_stub, alice, "remember me")
    model_server.reset(Script(reply=lambda _: " ".join(["word"] * 200), token_delay=0.02))
    call = chat_stub.StreamChat(chat_pb2.StreamChatRequest(
        message="go on", conversation=first.conversation), metadata=alice.metadata)
    deltas = 0
    async for event in call:
        deltas += event.WhichOneof("event") == "delta"
        if deltas == 3:
            break
    cancelled_at = time.monotonic()
    call.cancel()
    delay = await _disconnect_delay(model_server, cancelled_at) - DISCONNECT_GRACE_SECONDS
    print(f"cancel reached the provider {delay * 1000:.1f} ms after the grace period")
    assert 0 <= delay < CANCEL_BUDGET_SECONDS
    assert model_server.seen[-1].finished is None
    # The partial answer is settled, not left held (once that happened, the turn is over).
    await eventually(lambda: usage(auth_stub, alice), lambda u: u.tokens_reserved == 0,
                     what="the settlement of the partial answer")
    conversation = await chat_stub.GetConversation(chat_pb2.GetConversationRequest(
        name=first.conversation), metadata=alice.metadata)
    assert conversation.message_count == 2  # only the first, completed turn


async def test_a_passed_deadline_closes_the_provider_request(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(Script(reply=lambda _: " ".join(["word"] * 200), token_delay=0.02))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_chat_with_deadline(chat_stub, alice, deadline_seconds=0.4)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    delay = (await _disconnect_delay(model_server, started + 0.4)
             - DISCONNECT_GRACE_SECONDS)
    print(f"deadline reached the provider {delay * 1000:.1f} ms after the grace period")
    assert 0 <= delay < CANCEL_BUDGET_SECONDS
    listed = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(),
                                               metadata=alice.metadata)
    assert not listed.conversations


async def stream_chat_with_deadline(chat_stub, alice: LoggedIn,  # type: ignore[no-untyped-def]
                                    *, deadline_seconds: float) -> None:
    async for _ in chat_stub.StreamChat(chat_pb2.StreamChatRequest(message="tell me"),
                                        metadata=alice.metadata, timeout=deadline_seconds):
        pass


@pytest.mark.parametrize("rpc", ["Chat", "StreamChat"])
async def test_a_delivered_answer_whose_history_write_fails_is_done_but_not_stored(
        chat_stub, auth_stub, model_server: OpenAIServer, bob: LoggedIn,
        monkeypatch: pytest.MonkeyPatch, rpc: str) -> None:
    writes: list[str] = []

    async def redis_down(self: ConversationStore, user: str, conversation: str, *,
                         is_new: bool, question: MessageRecord, answer: MessageRecord) -> bool:
        writes.append(answer.id)
        raise ConnectionError("redis went away")

    monkeypatch.setattr(ConversationStore, "append_turn", redis_down)
    before = await usage(auth_stub, bob)
    if rpc == "Chat":
        answer = await chat_stub.Chat(chat_pb2.ChatRequest(message="ping"),
                                      metadata=bob.metadata)
        assert answer.message.content == "You said: ping"
        assert not answer.stored and answer.message.name == ""
        charged = answer.usage.total_tokens
    else:
        seen = await stream_chat(chat_stub, bob, "ping")
        assert seen.kinds[-1] == "done" and seen.text == "You said: ping"
        assert seen.done is not None
        assert not seen.done.stored and seen.done.message == ""
        charged = seen.done.usage.total_tokens
    assert len(writes) == 3 and len(set(writes)) == 1  # three tries of the same turn
    after = await eventually(lambda: usage(auth_stub, bob), lambda u: u.tokens_reserved == 0,
                             what="the settlement")
    assert after.tokens_used - before.tokens_used == charged > 0  # charged once
    monkeypatch.undo()
    listed = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(),
                                               metadata=bob.metadata)
    assert not listed.conversations
