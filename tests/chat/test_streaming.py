"""Streaming and unary chat through the real ChatOpenAI client against the
OpenAI-compatible test server: event order, tokens, usage charged, finish reasons."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmmesh.chat.v1 import chat_pb2

from services.chat.tokens import count_tokens
from tests.chat.openai_server import OpenAIServer, Script, words
from tests.chat.streams import stream_chat, usage
from tests.helpers import LoggedIn


async def test_a_stream_is_start_deltas_done_in_the_provider_order(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    reply = "one two three four five six seven eight nine ten"
    # Tokens 20 ms apart: the stream keeps up, each goes out as its own delta.
    model_server.reset(Script(reply=lambda _: reply, token_delay=0.02))
    seen = await stream_chat(chat_stub, alice, "count to ten")
    assert seen.kinds == ["start", *["delta"] * 10, "done"]
    assert seen.deltas == words(reply)
    assert seen.start is not None and seen.start.model == "echo"
    assert seen.conversation.startswith("conversations/")
    assert seen.done is not None
    assert seen.done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert seen.done.message.startswith(seen.conversation + "/messages/")
    assert seen.done.stored
    # The provider got the real client's request: our model name, key, streaming usage.
    (request,) = model_server.seen
    assert request.body["model"] == "echo-1"
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.body["messages"][-1] == {"role": "user", "content": "count to ten"}


async def test_usage_is_the_providers_and_is_charged_to_the_caller_only(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn,
        bob: LoggedIn) -> None:
    before_alice, before_bob = await usage(auth_stub, alice), await usage(auth_stub, bob)
    seen = await stream_chat(chat_stub, alice, "hello there")
    assert seen.done is not None
    provider_prompt = sum(len(m["content"].split()) + 4
                          for m in model_server.seen[-1].body["messages"])
    assert seen.done.usage.prompt_tokens == provider_prompt
    assert seen.done.usage.completion_tokens == len(words("You said: hello there"))
    assert seen.done.usage.total_tokens == (seen.done.usage.prompt_tokens
                                            + seen.done.usage.completion_tokens)
    after_alice, after_bob = await usage(auth_stub, alice), await usage(auth_stub, bob)
    assert after_alice.tokens_used - before_alice.tokens_used == seen.done.usage.total_tokens
    assert after_alice.tokens_reserved == 0
    assert after_bob.tokens_used == before_bob.tokens_used


async def test_max_tokens_reaches_the_provider_and_length_is_reported(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(Script(reply=lambda _: "a b c d e f g h"))
    seen = await stream_chat(chat_stub, alice, "long please", max_tokens=3, temperature=0.5)
    assert seen.text == "a b c"
    assert seen.done is not None and seen.done.finish_reason == chat_pb2.FINISH_REASON_LENGTH
    body = model_server.seen[-1].body
    assert body["max_completion_tokens"] == 3 and body["temperature"] == 0.5


async def test_the_default_max_tokens_applies_when_unset(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    await stream_chat(chat_stub, alice, "hi")
    assert model_server.seen[-1].body["max_completion_tokens"] == 64
    assert "temperature" not in model_server.seen[-1].body


async def test_unary_chat_returns_the_stored_answer(chat_stub, model_server: OpenAIServer,
                                                    alice: LoggedIn) -> None:
    answer = await chat_stub.Chat(chat_pb2.ChatRequest(message="ping"), metadata=alice.metadata)
    assert answer.message.content == "You said: ping"
    assert answer.model == "echo" and answer.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert answer.message.role == chat_pb2.ROLE_ASSISTANT
    assert answer.message.name.startswith(answer.conversation + "/messages/")
    assert answer.stored
    assert answer.usage.total_tokens > 0 and not answer.sources
    listed = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=answer.conversation), metadata=alice.metadata)
    assert [m.content for m in listed.messages] == ["ping", "You said: ping"]
    assert listed.messages[1].name == answer.message.name
    assert listed.messages[1].usage == answer.usage


async def test_a_provider_without_usage_is_counted_locally(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(Script(reply=lambda _: "fine thanks", report_usage=False))
    before = await usage(auth_stub, alice)
    seen = await stream_chat(chat_stub, alice, "how are you")
    assert seen.done is not None
    assert seen.done.usage.completion_tokens == count_tokens("fine thanks")  # the whole text
    assert seen.done.usage.prompt_tokens > 0
    after = await usage(auth_stub, alice)
    assert after.tokens_used - before.tokens_used == seen.done.usage.total_tokens


async def test_list_models_names_the_default(chat_stub, alice: LoggedIn) -> None:
    listed = await chat_stub.ListModels(chat_pb2.ListModelsRequest(), metadata=alice.metadata)
    by_id = {m.model_id: m for m in listed.models}
    assert list(by_id) == ["echo", "slow", "down", "extractive"]
    assert [m.model_id for m in listed.models if m.default] == ["echo"]
    assert by_id["echo"].name == "models/echo" and by_id["echo"].max_output_tokens == 256
    assert by_id["echo"].generative and by_id["echo"].provider == "openai"
    assert not by_id["extractive"].generative
    assert by_id["extractive"].provider == "extractive"
    first = await chat_stub.ListModels(chat_pb2.ListModelsRequest(page_size=3),
                                       metadata=alice.metadata)
    rest = await chat_stub.ListModels(chat_pb2.ListModelsRequest(
        page_size=3, page_token=first.next_page_token), metadata=alice.metadata)
    assert [m.model_id for m in [*first.models, *rest.models]] == list(by_id)
    assert rest.next_page_token == ""


async def test_the_chat_server_reports_serving_and_reflects_its_api(chat_server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{chat_server.port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="llmmesh.chat.v1.ChatService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
