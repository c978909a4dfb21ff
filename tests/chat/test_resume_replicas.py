"""Resume and cancel across chat replicas: two chat servers as their own processes on
the same Redis (and the session's auth server); a stream started on one is resumed,
read live and cancelled through the other."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.redis_server import LocalRedis, free_port
from services.chat.tokens import count_tokens
from tests.chat.conftest import model_entries
from tests.chat.openai_server import OpenAIServer
from tests.chat.streams import usage
from tests.chat.test_resume import REPLY, _read, _resume, _slow, _start, _text
from tests.faults.processes import ServiceProcess, process_env
from tests.helpers import LoggedIn, eventually


def _disconnected(model_server: OpenAIServer):  # type: ignore[no-untyped-def]
    async def probe() -> float | None:
        return model_server.seen[-1].disconnected
    return probe


Stubs = tuple[chat_pb2_grpc.ChatServiceStub, chat_pb2_grpc.ChatServiceStub]


def _chat_process(redis_server: LocalRedis, auth_address: str, model_server: OpenAIServer,
                  logs: Path) -> ServiceProcess:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = process_env(logs / "data", redis_server.url, LLMMESH_AUTH_ADDRESS=auth_address,
                      LLMMESH_CHAT_MODELS=json.dumps(model_entries(model_server.base_url, dead)),
                      LLMMESH_CHAT_DISCONNECT_GRACE_SECONDS="0.5",
                      LLMMESH_CHAT_TURN_HEARTBEAT_SECONDS="0.05")
    return ServiceProcess("chat", env, logs)


@pytest.fixture(scope="module")
async def replicas(redis_server: LocalRedis, auth_address: str, model_server: OpenAIServer,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stubs]:
    processes = [_chat_process(redis_server, auth_address, model_server,
                               tmp_path_factory.mktemp(f"chat{index}")) for index in range(2)]
    try:
        await asyncio.gather(*(process.start() for process in processes))
        async with grpc.aio.insecure_channel(processes[0].address) as one, \
                grpc.aio.insecure_channel(processes[1].address) as other:
            yield chat_pb2_grpc.ChatServiceStub(one), chat_pb2_grpc.ChatServiceStub(other)
    finally:
        for process in processes:
            process.stop()


async def test_a_cut_stream_resumes_on_another_chat_process(
        replicas: Stubs, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    one, other = replicas
    model_server.reset(_slow())
    control = await _read(_start(one, alice))
    before = await usage(auth_stub, alice)
    cut_at = random.randint(2, len(control) - 2)
    seen = await _read(_start(one, alice), until=cut_at)
    rest = await _read(_resume(other, alice, seen[0].start.turn, seen[-1].sequence))
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1)), cut_at
    assert _text(whole) == _text(control) == REPLY, cut_at
    done = whole[-1].done
    assert done.finish_reason == chat_pb2.FINISH_REASON_STOP and done.stored
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.usage.total_tokens


async def test_a_resumer_on_another_process_keeps_the_turn_past_the_grace(
        replicas: Stubs, model_server: OpenAIServer, alice: LoggedIn) -> None:
    one, other = replicas
    model_server.reset(_slow(0.05))  # 2 s: four times the grace
    seen = await _read(_start(one, alice), until=2)
    rest = await _read(_resume(other, alice, seen[0].start.turn, seen[-1].sequence))
    assert rest[-1].done.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert _text(seen + rest) == REPLY
    assert model_server.seen[-1].disconnected is None


async def test_cancel_through_another_process_stops_the_turn(
        replicas: Stubs, auth_stub, model_server: OpenAIServer, alice: LoggedIn) -> None:
    one, other = replicas
    model_server.reset(_slow(0.05))
    before = await usage(auth_stub, alice)
    call = _start(one, alice)
    seen = [await call.read() for _ in range(3)]
    await other.CancelTurn(chat_pb2.CancelTurnRequest(name=seen[0].start.turn),
                           metadata=alice.metadata, timeout=10)
    rest = await asyncio.wait_for(_read(call), 5)
    whole = seen + rest
    done = whole[-1].done
    assert done.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    assert len(_text(whole)) < len(REPLY)
    assert done.usage.completion_tokens == count_tokens(_text(whole))
    await eventually(_disconnected(model_server), lambda at: at is not None,
                     what="the provider request closing")
    after = await eventually(lambda: usage(auth_stub, alice),
                             lambda u: u.tokens_reserved == 0, what="the settle")
    assert after.tokens_used - before.tokens_used == done.usage.total_tokens


async def test_a_resumer_learns_when_the_turns_process_died(
        replicas: Stubs, redis_server: LocalRedis, auth_address: str,
        model_server: OpenAIServer, alice: LoggedIn, tmp_path: Path) -> None:
    """SIGKILL the process running a turn: a resumer elsewhere gets what was logged, then
    an error event (sequence 0, TURN_LOST) once the turn's lease lapsed, never a hang."""
    _, other = replicas
    doomed = _chat_process(redis_server, auth_address, model_server, tmp_path)
    await doomed.start()
    try:
        model_server.reset(_slow(0.05))
        async with grpc.aio.insecure_channel(doomed.address) as channel:
            seen = await _read(_start(chat_pb2_grpc.ChatServiceStub(channel), alice), until=3)
            doomed.kill()
    finally:
        doomed.stop()
    rest = await asyncio.wait_for(
        _read(_resume(other, alice, seen[0].start.turn, seen[-1].sequence)), 10)
    assert rest, "no end"
    lost = rest[-1]
    assert lost.sequence == 0 and lost.WhichOneof("event") == "error"
    assert lost.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert [e.sequence for e in seen + rest[:-1]] == list(range(1, len(seen) + len(rest)))
