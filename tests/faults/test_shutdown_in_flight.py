"""Faults: the launcher stopped (SIGINT, like Ctrl-C) with 8 streams in flight, 4 on
chat's own port and 4 through Envoy. Every stream ends honestly (done, or an error that
is not QUOTA_EXHAUSTED: an infrastructure failure is no exhausted quota), the launcher
exits in bounded time, and once Redis is back from its AOF the user was charged what the
streams generated, within one hold step each, with no hold left open.

"Generated" is what each turn's event log holds (read back with ResumeStreamChat from a
chat server over the restored Redis): a turn outlives its client (the edge, stopped
first, cuts its streams; chat keeps their turns for a resumer until it stops, and then
cancels them), so it is charged what it generated, which is at least what its client
received and is all there for a resumer."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.redis_server import LocalRedis
from services.auth.config import AuthConfig
from services.auth.server import create_server
from services.chat.config import ChatConfig
from services.chat.server import create_server as create_chat_server
from services.chat.tokens import count_tokens
from services.runtime.config import Env
from tests.chat.openai_server import OpenAIServer, Script
from tests.conftest import mesh_env
from tests.faults.processes import (
    StreamOutcome,
    hold_step,
    long_reply,
    model_entry,
    stream_chat,
    usage,
)
from tests.helpers import PASSWORD, LoggedIn, eventually, register_and_login
from tests.mesh.test_launcher import Launcher, start_mesh

MESSAGE = "Please write a long answer about the tides."
MAX_TOKENS = 400
STREAMS_PER_PORT = 4
STREAM_DEADLINE = 60.0
LAUNCHER_EXIT_SECONDS = 30.0  # edge, then chat's 2 s grace and drain, then the rest


class SettleLostAtShutdown(AssertionError):
    """Chat lost settlements while stopping (the holds fell back to their checkpoints)."""


@pytest.fixture
async def model() -> AsyncIterator[OpenAIServer]:
    """Two tokens a word, 10 ms apart: a 400-token answer outgrows its first hold
    (streams extend while the mesh stops) and takes about 2 s."""
    server = OpenAIServer(script=Script(reply=long_reply(1000, tokens_per_word=2),
                                        token_delay=0.01, report_usage=False))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_launcher_stopped_with_streams_in_flight(model: OpenAIServer,
                                                      tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    launcher, ports = await asyncio.to_thread(
        start_mesh, data_dir, LLMMESH_CHAT_MODELS=json.dumps([model_entry(model.base_url)]),
        LLMMESH_CHAT_RESERVATION_TTL_SECONDS="3", LLMMESH_AUTH_RESERVATION_TTL_SECONDS="3",
        LLMMESH_SHUTDOWN_GRACE_SECONDS="2")
    try:
        outcomes, prompt_tokens, user, baseline, stopped_in = await _stop_under_streams(
            launcher, ports)
    finally:
        await asyncio.to_thread(launcher.stop)
    assert launcher.process.returncode == 0, launcher.output[-3000:]
    assert stopped_in < LAUNCHER_EXIT_SECONDS, launcher.output[-3000:]

    for where, outcome in outcomes:
        assert outcome.started, (where, outcome.describe())
        ended = outcome.done is not None or outcome.error_code is not None
        assert ended, (where, outcome.describe())
        if outcome.done is not None:
            assert outcome.done.finish_reason != chat_pb2.FINISH_REASON_QUOTA_EXHAUSTED, \
                (where, outcome.describe(), launcher.output[-3000:])
        else:
            assert outcome.error_code is not grpc.StatusCode.RESOURCE_EXHAUSTED, \
                (where, outcome.describe())

    # Redis back from its AOF on the same port, and auth over it: the ledger.
    redis = LocalRedis(data_dir / "redis", ports["redis"])
    redis.start()
    server = create_server(AuthConfig.from_env(Env(mesh_env(redis, data_dir))))
    chat_server = None
    try:
        port = await server.start()
        chat_server = create_chat_server(ChatConfig.from_env(Env(mesh_env(
            redis, data_dir, LLMMESH_AUTH_ADDRESS=f"127.0.0.1:{port}"))))
        chat_port = await chat_server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, \
                grpc.aio.insecure_channel(f"127.0.0.1:{chat_port}") as chat_channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            login = await auth.Login(auth_pb2.LoginRequest(username=user.user.username,
                                                           password=PASSWORD), timeout=10)
            again = LoggedIn(login.user, login.tokens)
            after = await eventually(lambda: usage(auth, again),
                                     lambda u: u.tokens_reserved == 0, within=15,
                                     what="every hold closed after the restart")
            chat = chat_pb2_grpc.ChatServiceStub(chat_channel)
            generated = [await _generated(chat, again, outcome, prompt_tokens)
                         for _, outcome in outcomes]
    finally:
        if chat_server is not None:
            await chat_server.stop(0)
        await server.stop(0)
        redis.stop()
    for (where, outcome), logged in zip(outcomes, generated, strict=True):
        assert logged >= outcome.delivered(prompt_tokens), (where, logged, outcome.describe())
    delivered = sum(generated)
    charged = after.tokens_used - baseline
    described = [(where, outcome.describe()) for where, outcome in outcomes]
    assert 0 <= charged <= delivered, (charged, delivered, described)
    assert delivered - charged <= len(outcomes) * hold_step(MAX_TOKENS), (
        charged, delivered, described)
    # Stricter than the ledger: every stream delivered something, so each hold (and the
    # control turn's) ends in a settle that reached auth while it was still up.
    auth_log = (data_dir / "logs" / "auth.log").read_text(errors="replace")
    settles = auth_log.count('QuotaService/SettleReservation", "code": "OK"')
    if settles < 1 + len(outcomes):
        raise SettleLostAtShutdown(f"auth saw {settles} settles for {1 + len(outcomes)} "
                                   f"turns; {described}")


async def _generated(chat: chat_pb2_grpc.ChatServiceStub, user: LoggedIn,
                     outcome: StreamOutcome, prompt_tokens: int) -> int:
    """What a stream's turn generated, read back from its log: the usage of its final
    event; checks that the client received a prefix of the logged answer."""
    assert outcome.turn, outcome.describe()
    deltas: list[str] = []
    done: chat_pb2.StreamDone | None = None
    async for event in chat.ResumeStreamChat(chat_pb2.ResumeStreamChatRequest(
            name=outcome.turn), metadata=user.metadata, timeout=10):
        kind = event.WhichOneof("event")
        if kind == "delta":
            deltas.append(event.delta.text)
        elif kind == "done":
            done = event.done
    text = "".join(deltas)
    assert text.startswith("".join(outcome.deltas)), outcome.describe()
    if done is not None:
        return int(done.usage.total_tokens)
    return prompt_tokens + count_tokens(text) if text else 0


async def _stop_under_streams(launcher: Launcher, ports: dict[str, int]) -> tuple[
        list[tuple[str, StreamOutcome]], int, LoggedIn, int, float]:
    """Start 8 streams, SIGINT the launcher once each has delivered a little; the
    streams' outcomes, the prompt count, the user, what it was charged before the
    streams, and how long the launcher took to exit."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['auth']}") as auth_channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['chat']}") as direct, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['edge']}") as edge:
        auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
        user = await register_and_login(auth)
        chat = chat_pb2_grpc.ChatServiceStub(direct)
        control = await stream_chat(chat, user, MESSAGE, 8, deadline=30)
        assert control.done is not None, control.describe()
        settled = await eventually(lambda: usage(auth, user),
                                   lambda u: u.tokens_reserved == 0, what="the control settle")

        streaming = asyncio.Event()
        going: set[int] = set()

        def tracker(index: int):  # type: ignore[no-untyped-def]
            def on_delta(count: int) -> None:
                if count == 30:
                    going.add(index)
                    if len(going) == 2 * STREAMS_PER_PORT:
                        streaming.set()
            return on_delta

        stubs = ([("chat", chat)] * STREAMS_PER_PORT
                 + [("edge", chat_pb2_grpc.ChatServiceStub(edge))] * STREAMS_PER_PORT)
        tasks = [asyncio.create_task(stream_chat(stub, user, MESSAGE, MAX_TOKENS,
                                                 deadline=STREAM_DEADLINE,
                                                 on_delta=tracker(index)))
                 for index, (_, stub) in enumerate(stubs)]
        try:
            await asyncio.wait_for(streaming.wait(), 30)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        began = time.monotonic()
        launcher.process.send_signal(signal.SIGINT)  # as Ctrl-C
        code = await asyncio.to_thread(launcher.process.wait, 60)
        stopped_in = time.monotonic() - began
        assert code == 0, launcher.output[-3000:]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), STREAM_DEADLINE)
        return ([(where, outcome) for (where, _), outcome in zip(stubs, outcomes, strict=True)],
                control.done.usage.prompt_tokens, user, settled.tokens_used, stopped_in)
