"""The chat hot path through the real ChatOpenAI client and the OpenAI-compatible test
server: a unary answer is one non-streamed provider call with the same content, usage,
history and charge as a streamed one; a stream slower than its model coalesces deltas
and loses nothing; a cancelled unary call closes the provider request."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from tests.chat.openai_server import OpenAIServer, Script, words
from tests.chat.streams import stream_chat, usage
from tests.helpers import LoggedIn, eventually

CANCEL_BUDGET_SECONDS = 0.3  # as in test_failures.py: typically a few ms here
REPLY = "The lighthouse keeper counted the ships that passed in the night."


async def _messages(chat_stub, user: LoggedIn,  # type: ignore[no-untyped-def]
                    conversation: str) -> list[tuple[int, str, str, str]]:
    listed = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(parent=conversation),
                                          metadata=user.metadata)
    return [(m.role, m.content, m.model, str(m.usage)) for m in listed.messages]


@pytest.mark.parametrize("report_usage", [True, False], ids=["provider-usage", "local-count"])
async def test_unary_and_streamed_answers_are_the_same_in_every_respect(
        chat_stub, auth_stub, model_server: OpenAIServer, bob: LoggedIn,
        report_usage: bool) -> None:
    model_server.reset(Script(reply=lambda _: REPLY, report_usage=report_usage))
    before = await usage(auth_stub, bob)
    streamed = await stream_chat(chat_stub, bob, "tell me about the keeper")
    between = await eventually(lambda: usage(auth_stub, bob),
                               lambda u: u.tokens_reserved == 0, what="the stream's settle")
    unary = await chat_stub.Chat(chat_pb2.ChatRequest(message="tell me about the keeper"),
                                 metadata=bob.metadata)
    after = await eventually(lambda: usage(auth_stub, bob),
                             lambda u: u.tokens_reserved == 0, what="the unary settle")

    assert streamed.done is not None
    assert unary.message.content == streamed.text == REPLY
    assert unary.usage == streamed.done.usage and unary.usage.total_tokens > 0
    assert unary.finish_reason == streamed.done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert unary.stored and streamed.done.stored
    charged_stream = between.tokens_used - before.tokens_used
    charged_unary = after.tokens_used - between.tokens_used
    assert charged_unary == charged_stream == unary.usage.total_tokens
    assert (await _messages(chat_stub, bob, unary.conversation)
            == await _messages(chat_stub, bob, streamed.conversation))
    # One provider call each: streamed for StreamChat, one whole answer for Chat.
    stream_request, unary_request = model_server.seen[-2:]
    assert stream_request.body.get("stream") is True
    assert not unary_request.body.get("stream")
    assert stream_request.body["messages"] == unary_request.body["messages"]


async def test_a_client_slower_than_the_model_gets_coalesced_deltas_and_nothing_lost(
        chat_server, model_server: OpenAIServer, bob: LoggedIn) -> None:
    reply = " ".join(f"w{index}" for index in range(240))
    model_server.reset(Script(reply=lambda _: reply))  # every token at once
    # A small flow-control window: chat's writes wait while this client is not reading.
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    deltas: list[str] = []
    done = None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{chat_server.port}",
                                         options=options) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).StreamChat(chat_pb2.StreamChatRequest(
            message="go", options=chat_pb2.ChatOptions(max_tokens=256)), metadata=bob.metadata)
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "delta":
                deltas.append(event.delta.text)
                if len(deltas) == 1:
                    await asyncio.sleep(0.3)  # the model writes on meanwhile
            elif kind == "done":
                done = event.done
    assert "".join(deltas) == reply
    assert 1 < len(deltas) < len(words(reply)) // 2  # fewer, larger messages
    assert done is not None and done.usage.completion_tokens == len(words(reply))


async def test_a_cancelled_unary_chat_closes_the_provider_request_and_charges_nothing(
        chat_stub, auth_stub, model_server: OpenAIServer, bob: LoggedIn) -> None:
    model_server.reset(Script(reply=lambda _: " ".join(["word"] * 200), token_delay=0.02))
    before = await usage(auth_stub, bob)
    call = chat_stub.Chat(chat_pb2.ChatRequest(message="a long one"), metadata=bob.metadata)
    await eventually(lambda: _requests(model_server), lambda n: n > 0, within=5,
                     what="the provider request")
    cancelled_at = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def disconnected() -> float | None:
        return model_server.seen[-1].disconnected

    at = await eventually(disconnected, lambda value: value is not None, within=2,
                          what="the provider seeing the client go away")
    assert at is not None and at - cancelled_at < CANCEL_BUDGET_SECONDS
    after = await eventually(lambda: usage(auth_stub, bob), lambda u: u.tokens_reserved == 0,
                             what="the release of the hold")
    assert after.tokens_used == before.tokens_used  # nothing delivered, nothing charged
    listed = await chat_stub.ListConversations(chat_pb2.ListConversationsRequest(),
                                               metadata=bob.metadata)
    assert not listed.conversations


async def _requests(model_server: OpenAIServer) -> int:
    return len(model_server.seen)


async def test_a_unary_answer_past_its_deadline_is_deadline_exceeded(
        chat_stub, model_server: OpenAIServer, bob: LoggedIn) -> None:
    model_server.reset(Script(reply=lambda _: " ".join(["word"] * 200), token_delay=0.02))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.Chat(chat_pb2.ChatRequest(message="a long one"),
                             metadata=bob.metadata, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_charged_tokens_are_counted_by_model_and_kind(
        chat_stub, chat_server, model_server: OpenAIServer, bob: LoggedIn) -> None:
    registry = chat_server.metrics.registry

    def counted(kind: str) -> float:
        return registry.get_sample_value("llmmesh_chat_tokens_total",
                                         {"model": "echo", "kind": kind}) or 0.0

    before = counted("prompt"), counted("completion")
    model_server.reset(Script(reply=lambda _: REPLY))
    streamed = await stream_chat(chat_stub, bob, "count me")
    unary = await chat_stub.Chat(chat_pb2.ChatRequest(message="count me"),
                                 metadata=bob.metadata)
    assert streamed.done is not None
    charged = [streamed.done.usage, unary.usage]
    assert counted("prompt") - before[0] == sum(u.prompt_tokens for u in charged)
    assert counted("completion") - before[1] == sum(u.completion_tokens for u in charged)
