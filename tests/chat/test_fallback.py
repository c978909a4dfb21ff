"""Provider fallback at the model layer: real ChatOpenAI clients against the
OpenAI-compatible test server, scripted to fail (services/chat/fallback.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from langchain_core.messages import BaseMessage, HumanMessage
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from pydantic import SecretStr

from mesh.redis_server import free_port
from services.chat.config import ChatConfig, ModelSpec, RetryPolicy, parse_models
from services.chat.fallback import FallbackChain
from services.chat.registry import ModelRegistry
from services.chat.server import create_server
from services.runtime.config import ConfigError, Env
from services.runtime.errors import FailedPrecondition
from services.runtime.provider_errors import provider_error
from tests.chat.openai_server import OpenAIServer, Script, count_prompt_tokens, words
from tests.chat.streams import stream_chat, usage
from tests.conftest import mesh_env
from tests.helpers import LoggedIn, eventually

QUESTION = [HumanMessage("tell me about fallbacks")]
ANSWER = "You said: tell me about fallbacks"


class _NoEmbedder:
    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise AssertionError("not used")


def chain(server: OpenAIServer, *specs: dict[str, Any]) -> FallbackChain:
    """The chain of the first spec: every spec is a model on the test server (or at
    `base_url`), the first falling back to the others in order."""
    models = [ModelSpec(provider="openai", base_url=spec.pop("base_url", server.base_url),
                        api_key=SecretStr("k"), **spec) for spec in specs]
    first = models[0]
    models[0] = ModelSpec(**{**first.__dict__,
                             "fallbacks": tuple(model.id for model in models[1:])})
    registry = ModelRegistry(models, models[0].id, _NoEmbedder())
    primary = registry.get(models[0].id)
    assert primary is not None
    return FallbackChain(registry.chain(primary))


async def streamed(fallbacks: FallbackChain) -> tuple[list[str], str]:
    """The answering models (one per chunk) and the text."""
    answered: list[str] = []
    text = ""
    async for model, chunk in fallbacks.stream(list[BaseMessage](QUESTION), {"max_tokens": 64}):
        answered.append(model.spec.id)
        text += chunk.content if isinstance(chunk.content, str) else ""
    return answered, text


def requests_to(server: OpenAIServer, model: str) -> int:
    return sum(1 for seen in server.seen if seen.body.get("model") == model)


async def test_a_failing_model_is_retried_then_the_fallback_answers(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=503)}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1",
                       "retry": RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01)},
                      {"id": "steady", "model": "steady-1"})
    answered, text = await streamed(fallbacks)
    assert set(answered) == {"steady"}
    assert text == ANSWER
    assert requests_to(model_server, "flaky-1") == 3
    assert requests_to(model_server, "steady-1") == 1


async def test_retry_after_is_honoured(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=429, retry_after="0.4")}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1",
                       "retry": RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01)},
                      {"id": "steady", "model": "steady-1"})
    answered, _ = await streamed(fallbacks)
    assert set(answered) == {"steady"}
    tries = [seen.started for seen in model_server.seen if seen.body["model"] == "flaky-1"]
    assert len(tries) == 2
    assert tries[1] - tries[0] >= 0.4  # waited as told, not the 10 ms backoff


async def test_a_retry_after_longer_than_the_longest_backoff_moves_on_at_once(
        model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=429, retry_after="120")}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1",
                       "retry": RetryPolicy(max_attempts=5, max_backoff_seconds=2)},
                      {"id": "steady", "model": "steady-1"})
    started = time.monotonic()
    answered, _ = await streamed(fallbacks)
    assert set(answered) == {"steady"}
    assert requests_to(model_server, "flaky-1") == 1
    assert time.monotonic() - started < 2


async def test_an_unreachable_model_falls_back(model_server) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    fallbacks = chain(model_server, {"id": "down", "base_url": dead},
                      {"id": "steady", "model": "steady-1"})
    answered, text = await streamed(fallbacks)
    assert set(answered) == {"steady"} and text == ANSWER


async def test_no_first_token_in_time_falls_back_and_closes_the_slow_request(
        model_server) -> None:
    model_server.by_model = {"slow-1": Script(first_token_delay=5)}
    fallbacks = chain(model_server,
                      {"id": "slow", "model": "slow-1", "first_token_timeout_seconds": 0.2},
                      {"id": "steady", "model": "steady-1"})
    answered, text = await streamed(fallbacks)
    assert set(answered) == {"steady"} and text == ANSWER
    slow = next(seen for seen in model_server.seen if seen.body["model"] == "slow-1")

    async def closed_at() -> float | None:
        return slow.disconnected

    await eventually(closed_at, lambda at: at is not None, what="the slow model's request closed")


async def test_every_model_failing_raises_the_last_ones_error(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=503), "steady-1": Script(status=502)}
    fallbacks = chain(model_server, {"id": "flaky", "model": "flaky-1"},
                      {"id": "steady", "model": "steady-1"})
    with pytest.raises(Exception) as caught:
        await streamed(fallbacks)
    assert "502" in str(caught.value)
    assert requests_to(model_server, "flaky-1") == requests_to(model_server, "steady-1") == 1


async def test_no_switch_after_the_first_token(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(fail_after_tokens=2)}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1",
                       "retry": RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01)},
                      {"id": "steady", "model": "steady-1"})
    answered: list[str] = []
    text = ""
    with pytest.raises(Exception):  # noqa: B017 — the provider's broken stream
        async for model, chunk in fallbacks.stream(list[BaseMessage](QUESTION),
                                                   {"max_tokens": 64}):
            answered.append(model.spec.id)
            text += chunk.content if isinstance(chunk.content, str) else ""
    assert set(answered) == {"flaky"}
    assert text == "You said:"
    assert requests_to(model_server, "flaky-1") == 1  # not retried either
    assert requests_to(model_server, "steady-1") == 0


async def test_a_refused_request_is_not_retried_nor_falls_back(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=400)}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1", "retry": RetryPolicy(max_attempts=3)},
                      {"id": "steady", "model": "steady-1"})
    with pytest.raises(Exception) as caught:
        await streamed(fallbacks)
    assert isinstance(provider_error(caught.value, "flaky"), FailedPrecondition)
    assert requests_to(model_server, "flaky-1") == 1
    assert requests_to(model_server, "steady-1") == 0


async def test_a_whole_answer_falls_back_too(model_server) -> None:
    model_server.by_model = {"flaky-1": Script(status=500)}
    fallbacks = chain(model_server,
                      {"id": "flaky", "model": "flaky-1",
                       "retry": RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01)},
                      {"id": "steady", "model": "steady-1", "max_output_tokens": 8})
    model, message = await fallbacks.invoke(list[BaseMessage](QUESTION), {"max_tokens": 64})
    assert model.spec.id == "steady"
    assert message.content == ANSWER
    last = model_server.seen[-1].body  # the fallback's own max_output_tokens bound the call
    assert last.get("max_completion_tokens", last.get("max_tokens")) == 8
    assert requests_to(model_server, "flaky-1") == 2


def test_fallbacks_must_name_configured_models() -> None:
    entry = {"id": "a", "base_url": "http://127.0.0.1:1/v1", "fallbacks": ["nope"]}
    with pytest.raises(ConfigError, match="unknown models"):
        parse_models(_json([entry]), Env({}))
    with pytest.raises(ConfigError, match="itself"):
        parse_models(_json([{**entry, "fallbacks": ["a"]}]), Env({}))
    with pytest.raises(ConfigError, match="max_attempts"):
        parse_models(_json([{**entry, "fallbacks": [], "retry": {"max_attempts": 0}}]),
                     Env({}))
    models = parse_models(_json([{**entry, "fallbacks": ["extractive"],
                                  "retry": {"max_attempts": 2}}]), Env({}))
    assert models[0].fallbacks == ("extractive",)
    assert models[0].retry.max_attempts == 2


def _json(value: object) -> str:
    return json.dumps(value)



# End to end: a chat server whose models fall back, over real gRPC.

@pytest.fixture(scope="module")
async def fallback_chat(redis_server, data_dir, auth_address, model_server
                        ) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
    models = [
        {"id": "echo", "model": "echo-1", "base_url": model_server.base_url, "api_key": "k"},
        {"id": "flaky", "model": "flaky-1", "base_url": model_server.base_url, "api_key": "k",
         "fallbacks": ["echo"], "retry": {"max_attempts": 2, "initial_backoff_seconds": 0.01},
         "default": True},
    ]
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_CHAT_MODELS=json.dumps(models))
    server = create_server(ChatConfig.from_env(Env(env)))
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel)
    await server.stop(0)


async def test_a_stream_says_which_model_answered_and_charges_its_usage(
        fallback_chat, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.by_model = {"flaky-1": Script(status=503)}
    before = await usage(auth_stub, alice)
    seen = await stream_chat(fallback_chat, alice, "hello there")
    assert seen.kinds[0] == "start" and seen.kinds[-1] == "done"
    assert seen.start is not None and seen.start.model == "echo"
    assert seen.done is not None and seen.done.model == "echo"
    assert seen.text == "You said: hello there"
    assert requests_to(model_server, "flaky-1") == 2  # tried twice, then fell back
    echo_request = next(s for s in model_server.seen if s.body["model"] == "echo-1")
    assert seen.done.usage.prompt_tokens == count_prompt_tokens(echo_request.body["messages"])
    assert seen.done.usage.completion_tokens == len(words("You said: hello there"))
    after = await usage(auth_stub, alice)
    assert after.tokens_used - before.tokens_used == seen.done.usage.total_tokens
    stored = await fallback_chat.ListMessages(chat_pb2.ListMessagesRequest(
        parent=seen.conversation), metadata=alice.metadata)
    assert stored.messages[-1].model == "echo"


async def test_a_unary_answer_says_which_model_answered(
        fallback_chat, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.by_model = {"flaky-1": Script(status=429, retry_after="0")}
    answer = await fallback_chat.Chat(chat_pb2.ChatRequest(message="hi"),
                                      metadata=alice.metadata)
    assert answer.model == "echo" and answer.message.model == "echo"
    assert answer.message.content == "You said: hi"


async def test_a_stream_broken_after_its_first_token_ends_with_an_error_event(
        fallback_chat, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.by_model = {"flaky-1": Script(fail_after_tokens=2)}
    seen = await stream_chat(fallback_chat, alice, "hello there")
    assert seen.start is not None and seen.start.model == "flaky"
    assert seen.kinds[-1] == "error" and seen.done is None
    assert isinstance(seen.error, status_pb2.Status)
    assert seen.error.code == code_pb2.UNAVAILABLE
    assert seen.text == "You said:"
    assert requests_to(model_server, "echo-1") == 0  # no silent switch
