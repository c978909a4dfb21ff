"""Resumable streams on one chat server (real gRPC, real Redis, the real ChatOpenAI
client against the OpenAI-compatible stub): numbered events, resume after a cut at a
random point, replay of a finished turn, the disconnect grace, explicit cancel,
ownership and validation. Resume on another chat process: test_resume_replicas.py;
through Envoy: test_resume_edge.py."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.config import ChatConfig
from services.chat.server import create_server
from services.chat.tokens import count_tokens
from services.runtime.config import Env
from tests.chat.conftest import DISCONNECT_GRACE_SECONDS
from tests.chat.openai_server import OpenAIServer, Script
from tests.chat.streams import usage
from tests.helpers import LoggedIn, error_info, eventually, field_violations

REPLY = " ".join(f"word{n:02d}" for n in range(40))


def _slow(token_delay: float = 0.01) -> Script:
    return Script(reply=lambda _: REPLY, token_delay=token_delay)


async def _read(call: grpc.aio.UnaryStreamCall, until: int | None = None  # type: ignore[type-arg]
                ) -> list[chat_pb2.StreamChatResponse]:
    """The call's events, all of them or the first `until`, then the call is cancelled."""
    events: list[chat_pb2.StreamChatResponse] = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
        if until is not None and len(events) >= until:
            call.cancel()
            break
    return events


def _text(events: list[chat_pb2.StreamChatResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


def _start(stub, user: LoggedIn, message: str = "talk"):  # type: ignore[no-untyped-def]
    return stub.StreamChat(chat_pb2.StreamChatRequest(message=message),
                           metadata=user.metadata, timeout=30)


def _resume(stub, user: LoggedIn, turn: str, after: int):  # type: ignore[no-untyped-def]
    return stub.ResumeStreamChat(chat_pb2.ResumeStreamChatRequest(
        name=turn, after_sequence=after), metadata=user.metadata, timeout=30)


async def test_events_are_numbered_and_the_start_names_the_turn(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow(0.002))
    events = await _read(_start(chat_stub, alice))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    start = events[0].start
    assert start.turn.startswith(start.conversation + "/turns/")
    assert events[-1].WhichOneof("event") == "done"
    assert _text(events) == REPLY


async def test_a_stream_cut_at_a_random_point_resumes_with_every_later_event_once(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow())
    control = await _read(_start(chat_stub, alice))
    assert _text(control) == REPLY
    before = await usage(auth_stub, alice)
    cut_at = random.randint(2, len(control) - 2)
    seen = await _read(_start(chat_stub, alice), until=cut_at)
    assert len(seen) == cut_at, cut_at
    turn = seen[0].start.turn
    rest = await _read(_resume(chat_stub, alice, turn, seen[-1].sequence))
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1)), cut_at
    assert _text(whole) == _text(control), cut_at
    done = whole[-1]
    assert done.WhichOneof("event") == "done" and done.done.stored
    assert done.done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert done.done.usage.completion_tokens == control[-1].done.usage.completion_tokens
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.done.usage.total_tokens


async def test_a_finished_turn_replays_the_rest_and_refuses_a_sequence_past_its_end(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow(0.001))
    events = await _read(_start(chat_stub, alice))
    turn, last = events[0].start.turn, events[-1].sequence
    assert await _read(_resume(chat_stub, alice, turn, 0)) == events
    assert await _read(_resume(chat_stub, alice, turn, 3)) == events[3:]
    assert await _read(_resume(chat_stub, alice, turn, last)) == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _read(_resume(chat_stub, alice, turn, last + 1))
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_info(refused.value).reason == "SEQUENCE_OUT_OF_RANGE"
    assert "after_sequence" in field_violations(refused.value)


async def test_a_resumer_reads_a_running_turn_live(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    """Two readers at once: the caller and a resumer from sequence 0 see the same turn."""
    model_server.reset(_slow())
    call = _start(chat_stub, alice)
    first = await call.read()
    resumed, rest = await asyncio.gather(
        _read(_resume(chat_stub, alice, first.start.turn, 0)), _read(call))
    assert resumed == [first, *rest]


async def test_a_turn_nobody_reads_within_the_grace_is_cancelled_and_charged_what_it_generated(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow(0.05))  # 40 tokens, 2 s: far longer than the grace
    before = await usage(auth_stub, alice)
    seen = await _read(_start(chat_stub, alice), until=3)
    cut = time.monotonic()

    async def disconnected() -> float | None:
        return model_server.seen[-1].disconnected

    at = await eventually(disconnected, lambda value: value is not None, within=5,
                          what="the provider request closing")
    assert at is not None and at - cut >= DISCONNECT_GRACE_SECONDS * 0.9
    # The log has the turn to its cancelled end; a late resumer reads the rest.
    rest = await _read(_resume(chat_stub, alice, seen[0].start.turn, seen[-1].sequence))
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    done = whole[-1].done
    assert done.finish_reason == chat_pb2.FINISH_REASON_CANCELLED and not done.stored
    generated = _text(whole)
    assert REPLY.startswith(generated) and len(generated) < len(REPLY)
    assert done.usage.completion_tokens == count_tokens(generated)
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.usage.total_tokens


async def test_a_resumer_keeps_a_turn_running_past_the_grace(
        chat_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow(0.03))  # about 1.2 s: four times the grace
    seen = await _read(_start(chat_stub, alice), until=2)
    rest = await _read(_resume(chat_stub, alice, seen[0].start.turn, seen[-1].sequence))
    assert rest[-1].done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert _text(seen + rest) == REPLY
    assert model_server.seen[-1].disconnected is None


async def test_cancel_stops_a_turn_at_once_and_charges_what_it_generated(
        chat_stub, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    model_server.reset(_slow(0.05))
    before = await usage(auth_stub, alice)
    call = _start(chat_stub, alice)
    seen = [await call.read() for _ in range(4)]
    asked = time.monotonic()
    await chat_stub.CancelTurn(chat_pb2.CancelTurnRequest(name=seen[0].start.turn),
                               metadata=alice.metadata, timeout=10)
    rest = await _read(call)
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    done = whole[-1].done
    assert done.finish_reason == chat_pb2.FINISH_REASON_CANCELLED

    async def disconnected() -> float | None:
        return model_server.seen[-1].disconnected

    at = await eventually(disconnected, lambda value: value is not None, within=2,
                          what="the provider request closing")
    assert at is not None and at - asked < 0.5
    generated = _text(whole)
    assert done.usage.completion_tokens == count_tokens(generated) > 0
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.usage.total_tokens
    # Cancelling an ended turn changes nothing.
    await chat_stub.CancelTurn(chat_pb2.CancelTurnRequest(name=seen[0].start.turn),
                               metadata=alice.metadata, timeout=10)


async def test_a_stopping_server_ends_its_running_turns_and_charges_what_they_generated(
        chat_env: dict[str, str], chat_stub, auth_stub, model_server: OpenAIServer,
        alice: LoggedIn) -> None:
    """A turn whose caller left runs on in its grace period (30 s here); the server
    stopping cancels it: its log ends with a cancelled done event another server serves,
    and it is charged what it generated."""
    server = create_server(ChatConfig.from_env(Env(
        {**chat_env, "LLMMESH_CHAT_DISCONNECT_GRACE_SECONDS": "30"})))
    port = await server.start()
    model_server.reset(_slow(0.05))
    before = await usage(auth_stub, alice)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            seen = await _read(_start(chat_pb2_grpc.ChatServiceStub(channel), alice), until=3)
    finally:
        await server.stop(0)
    assert model_server.seen[-1].disconnected is not None
    rest = await _read(_resume(chat_stub, alice, seen[0].start.turn, seen[-1].sequence))
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    done = whole[-1].done
    assert done.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    assert done.usage.completion_tokens == count_tokens(_text(whole))
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.usage.total_tokens


async def test_someone_elses_turn_is_not_found(chat_stub, model_server: OpenAIServer,
                                               alice: LoggedIn, bob: LoggedIn) -> None:
    model_server.reset(_slow(0.001))
    events = await _read(_start(chat_stub, alice))
    turn = events[0].start.turn
    for call in (_resume(chat_stub, bob, turn, 0),
                 chat_stub.CancelTurn(chat_pb2.CancelTurnRequest(name=turn),
                                      metadata=bob.metadata, timeout=10)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await (_read(call) if isinstance(call, grpc.aio.UnaryStreamCall) else call)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # Unknown (or expired) turns too, and a known turn under another conversation.
    unknown = f"{events[0].start.conversation}/turns/{'0' * 32}"
    other = f"conversations/{'1' * 32}/turns/{turn.rpartition('/')[2]}"
    for name in (unknown, other):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _read(_resume(chat_stub, alice, name, 0))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("name", "after", "fields"), [
    ("", 0, {"name"}),
    ("turns/abc", 0, {"name"}),
    ("conversations/xyz/turns/abc", -1, {"name", "after_sequence"}),
    (f"conversations/{'a' * 32}/turns/{'b' * 32}", -5, {"after_sequence"}),
])
async def test_garbage_is_invalid_argument_with_field_violations(
        chat_stub, alice: LoggedIn, name: str, after: int, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _read(_resume(chat_stub, alice, name, after))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == fields
    if "name" in fields:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chat_stub.CancelTurn(chat_pb2.CancelTurnRequest(name=name),
                                       metadata=alice.metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(refused.value)) == {"name"}
