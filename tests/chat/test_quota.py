"""Reserve, settle, cut off: the quota protocol end to end with the real auth service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmmesh.auth.v1 import quota_pb2
from llmmesh.chat.v1 import chat_pb2

from services.chat.prompts import build_messages
from services.chat.tokens import estimate_prompt_tokens
from tests.chat.openai_server import OpenAIServer, Script
from tests.chat.streams import Streamed, stream_chat, usage
from tests.conftest import SERVICE_METADATA
from tests.helpers import LoggedIn, error_info, eventually, quota_failure


def worst_case(message: str, max_tokens: int) -> int:
    """What chat holds for a first turn: the prompt estimate plus max_tokens."""
    messages = build_messages(message, [], None)
    return estimate_prompt_tokens(str(m.content) for m in messages) + max_tokens


async def _limit(quota_stub, user: LoggedIn, limit: int) -> None:  # type: ignore[no-untyped-def]
    await quota_stub.SetTokenLimit(quota_pb2.SetTokenLimitRequest(
        user_id=user.user_id, monthly_token_limit=limit), metadata=SERVICE_METADATA)


async def test_a_request_that_does_not_fit_is_refused_before_the_model(
        chat_stub, quota_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    await _limit(quota_stub, alice, worst_case("hi", 64) - 1)
    for call in (chat_stub.Chat(chat_pb2.ChatRequest(message="hi"), metadata=alice.metadata),
                 stream_chat(chat_stub, alice, "hi")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "TOKEN_QUOTA_EXHAUSTED"
        (violation,) = quota_failure(caught.value).violations
        assert violation.subject == f"users/{alice.user_id}"
    await asyncio.sleep(0.2)  # a request sent late (after the refusal) would show now
    assert model_server.seen == []
    answer = await chat_stub.Chat(chat_pb2.ChatRequest(
        message="hi", options=chat_pb2.ChatOptions(max_tokens=63)), metadata=alice.metadata)
    assert answer.finish_reason == chat_pb2.FINISH_REASON_STOP  # exactly fits


async def test_fifty_concurrent_streams_against_room_for_ten(
        chat_stub, auth_stub, quota_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    hold = worst_case("race", 64)
    limit = 11 * hold - 1  # room for 10 worst cases, not 11
    await _limit(quota_stub, alice, limit)
    # No stream may settle before every reservation is decided: the provider holds its
    # answers until the 40 refusals are in.
    gate = asyncio.Event()
    model_server.reset(Script(gate=gate))
    calls = [asyncio.create_task(stream_chat(chat_stub, alice, "race")) for _ in range(50)]

    async def finished() -> int:
        return sum(call.done() for call in calls)

    await eventually(finished, lambda count: count >= 40, what="the refusals")
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [o for o in outcomes if isinstance(o, Streamed)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(admitted) == 10 and len(refused) == 40
    other = [e.details() for e in refused if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert not other
    assert all(s.done is not None and s.text == "You said: race" for s in admitted)
    assert len(model_server.seen) == 10
    state = await usage(auth_stub, alice)
    charged = sum(s.done.usage.total_tokens for s in admitted if s.done is not None)
    assert state.tokens_used == charged <= limit
    assert state.tokens_reserved == 0


@pytest.mark.parametrize(("lower_limit_mid_stream", "delivered"), [(False, 8), (True, 5)],
                         ids=["outgrows-estimate", "limit-lowered"])
async def test_a_stream_that_runs_out_is_cut_off_and_charged_what_it_delivered(
        chat_stub, auth_stub, quota_stub, model_server: OpenAIServer, alice: LoggedIn,
        lower_limit_mid_stream: bool, delivered: int) -> None:
    # The provider ignores max_tokens (5) and keeps going: usage beyond the estimate.
    model_server.reset(Script(reply=lambda _: " ".join(["tok"] * 300), ignore_max_tokens=True,
                              token_delay=0.002))
    hold = worst_case("talk", 5)
    # Room for 3 tokens past the hold; or, until it is lowered, for the whole reply.
    limit = hold + 1000 if lower_limit_mid_stream else hold + 3
    await _limit(quota_stub, alice, limit)
    call = chat_stub.StreamChat(chat_pb2.StreamChatRequest(
        message="talk", options=chat_pb2.ChatOptions(max_tokens=5)), metadata=alice.metadata)
    seen = Streamed()
    async for event in call:
        kind = event.WhichOneof("event")
        seen.kinds.append(kind)
        if kind == "start":
            seen.start = event.start
        elif kind == "delta":
            seen.deltas.append(event.delta.text)
            if lower_limit_mid_stream and len(seen.deltas) == 2:
                await _limit(quota_stub, alice, hold)  # no room to grow any more
        elif kind == "done":
            seen.done = event.done
    # Deltas may coalesce (the turn takes the model's text at the reader's pace).
    assert seen.kinds[0] == "start" and seen.kinds[-1] == "done"
    assert set(seen.kinds[1:-1]) == {"delta"}
    assert seen.text.split() == ["tok"] * delivered
    assert seen.done is not None
    assert seen.done.finish_reason == chat_pb2.FINISH_REASON_QUOTA_EXHAUSTED
    assert seen.done.usage.completion_tokens == delivered
    state = await usage(auth_stub, alice)
    assert state.tokens_used == seen.done.usage.total_tokens
    assert state.tokens_used <= (hold if lower_limit_mid_stream else limit)
    assert state.tokens_reserved == 0
    async def last_disconnect() -> float | None:
        return model_server.seen[-1].disconnected

    # The provider's stream was closed, not read to the end.
    await eventually(last_disconnect, lambda at: at is not None, within=2,
                     what="the provider's stream being closed")
    assert model_server.seen[-1].tokens_sent < 300
    # A cut-off turn completed: it is stored with what was delivered.
    stored = await chat_stub.ListMessages(chat_pb2.ListMessagesRequest(
        parent=seen.conversation), metadata=alice.metadata)
    assert [m.content for m in stored.messages] == ["talk", seen.text]
