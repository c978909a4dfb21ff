"""Faults under chat streams, with auth and chat as real processes, a real Redis and an
OpenAI-compatible stub that reports no usage (chat charges by its own count):

- chat SIGKILLed mid-stream: the client sees the stream fail (never a clean end), and once
  the hold expired the user is charged what was delivered, within one hold step;
- Redis paused (SIGSTOP 6 s) under 4 streams: each ends with `done` or UNAVAILABLE, never
  INTERNAL nor a hang past its deadline, and after recovery each is charged what it
  delivered, within one hold step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.redis_server import LocalRedis
from tests.chat.openai_server import OpenAIServer, Script
from tests.faults.processes import (
    ServiceProcess,
    StreamOutcome,
    hold_step,
    long_reply,
    model_entry,
    process_env,
    stream_chat,
    usage,
)
from tests.helpers import LoggedIn, eventually, register_and_login

MESSAGE = "Please write a long answer about the tides."
MAX_TOKENS = 400


@dataclass
class ChatMesh:
    redis: LocalRedis
    model: OpenAIServer
    auth: ServiceProcess
    chat: ServiceProcess
    auth_stub: auth_pb2_grpc.AuthServiceStub
    chat_stub: chat_pb2_grpc.ChatServiceStub


async def _chat_mesh(tmp_path: Path, ttl_seconds: int,
                     tokens_per_word: int = 1) -> AsyncIterator[ChatMesh]:
    redis = LocalRedis(tmp_path / "redis", persistent=False)
    model = OpenAIServer(script=Script(reply=long_reply(1000, tokens_per_word),
                                       token_delay=0.005,
                                       report_usage=False))
    processes: list[ServiceProcess] = []
    redis.start()
    try:
        await model.start()
        env = process_env(tmp_path / "data", redis.url,
                          LLMMESH_CHAT_MODELS=json.dumps([model_entry(model.base_url)]),
                          LLMMESH_CHAT_RESERVATION_TTL_SECONDS=str(ttl_seconds),
                          # Auth's own TTL too: an extension renews a hold by auth's TTL,
                          # not the reserved one (see test_hold_expiry.py).
                          LLMMESH_AUTH_RESERVATION_TTL_SECONDS=str(ttl_seconds))
        auth = ServiceProcess("auth", env, tmp_path / "logs")
        chat = ServiceProcess("chat", env, tmp_path / "logs")
        processes += [auth, chat]
        await auth.start()
        await chat.start()
        async with grpc.aio.insecure_channel(auth.address) as auth_channel, \
                grpc.aio.insecure_channel(chat.address) as chat_channel:
            yield ChatMesh(redis, model, auth, chat, auth_pb2_grpc.AuthServiceStub(auth_channel),
                           chat_pb2_grpc.ChatServiceStub(chat_channel))
    finally:
        for process in reversed(processes):
            process.stop()
        await model.stop()
        redis.stop()


@pytest.fixture
async def short_holds(tmp_path: Path) -> AsyncIterator[ChatMesh]:
    """Holds that expire 3 s after their last extension."""
    async for mesh in _chat_mesh(tmp_path, ttl_seconds=3):
        yield mesh


async def _control_turn(mesh: ChatMesh, user: LoggedIn) -> tuple[int, int]:
    """One complete short turn with MESSAGE: chat's own prompt count for it (the stub
    reports no usage) and the user's charge once it settled."""
    control = await stream_chat(mesh.chat_stub, user, MESSAGE, 8, deadline=30)
    assert control.done is not None, control.describe()
    settled = await eventually(lambda: usage(mesh.auth_stub, user),
                               lambda u: u.tokens_reserved == 0, what="the control settle")
    assert settled.tokens_used == control.done.usage.total_tokens
    return control.done.usage.prompt_tokens, settled.tokens_used


async def test_chat_killed_mid_stream_is_charged_what_it_delivered(
        short_holds: ChatMesh) -> None:
    mesh = short_holds
    user = await register_and_login(mesh.auth_stub)
    prompt_tokens, baseline = await _control_turn(mesh, user)

    killed_at = asyncio.get_running_loop().create_future()

    def kill_after_150(count: int) -> None:
        if count == 150 and not killed_at.done():
            mesh.chat.kill()
            killed_at.set_result(time.monotonic())

    outcome = await stream_chat(mesh.chat_stub, user, MESSAGE, MAX_TOKENS, deadline=30,
                                on_delta=kill_after_150)

    assert killed_at.done(), outcome.describe()
    # A cut stream is recognisably broken: no done, the RPC fails UNAVAILABLE.
    assert outcome.done is None and outcome.error_event is None, outcome.describe()
    assert outcome.status is grpc.StatusCode.UNAVAILABLE, outcome.describe()
    assert len(outcome.deltas) >= 150

    # The hold expires (3 s after its last extension) and auth closes it on the next read.
    after = await eventually(lambda: usage(mesh.auth_stub, user),
                             lambda u: u.tokens_reserved == 0, within=15,
                             what="the killed stream's hold expiring")
    charged = after.tokens_used - baseline
    delivered = outcome.delivered(prompt_tokens)
    assert 0 <= charged <= delivered, (charged, delivered)
    assert delivered - charged <= hold_step(MAX_TOKENS), (
        f"charged {charged} for {delivered} delivered ({prompt_tokens} prompt + "
        f"{outcome.completion_tokens} completion in {len(outcome.deltas)} deltas)")


@pytest.fixture
async def paused_redis_mesh(tmp_path: Path) -> AsyncIterator[ChatMesh]:
    """Holds that would expire during a 6 s pause unless extended (5 s), and replies
    that outgrow their first hold (two tokens a word), so streams extend mid-pause."""
    async for mesh in _chat_mesh(tmp_path, ttl_seconds=5, tokens_per_word=2):
        yield mesh


STREAMS = 4
PAUSE_SECONDS = 6.0
STREAM_DEADLINE = 40.0


async def test_redis_paused_under_streams_ends_each_honestly_and_charges_within_a_step(
        paused_redis_mesh: ChatMesh) -> None:
    mesh = paused_redis_mesh
    mesh.model.script.token_delay = 0.01  # 400 tokens: about 4 s a stream
    users = [await register_and_login(mesh.auth_stub) for _ in range(STREAMS)]
    prompt_tokens, _ = await _control_turn(mesh, users[0])
    baselines = [(await usage(mesh.auth_stub, user)).tokens_used for user in users]
    assert mesh.redis.process is not None
    redis_pid = mesh.redis.process.pid

    all_started = asyncio.Event()
    progressed: set[int] = set()

    def tracker(index: int):  # type: ignore[no-untyped-def]
        def on_delta(count: int) -> None:
            if count == 20:
                progressed.add(index)
                if len(progressed) == STREAMS:
                    all_started.set()
        return on_delta

    tasks = [asyncio.create_task(stream_chat(mesh.chat_stub, user, MESSAGE, MAX_TOKENS,
                                             deadline=STREAM_DEADLINE,
                                             on_delta=tracker(index)))
             for index, user in enumerate(users)]
    paused = False
    try:
        await asyncio.wait_for(all_started.wait(), 20)
        os.kill(redis_pid, signal.SIGSTOP)
        paused = True
        await asyncio.sleep(PAUSE_SECONDS)
    finally:
        if paused:
            os.kill(redis_pid, signal.SIGCONT)
        if not all_started.is_set():
            for task in tasks:
                task.cancel()
    began = time.monotonic()
    outcomes: list[StreamOutcome] = await asyncio.wait_for(asyncio.gather(*tasks),
                                                           STREAM_DEADLINE + 5)
    assert time.monotonic() - began < STREAM_DEADLINE

    for outcome in outcomes:
        ended_well = outcome.done is not None or outcome.error_code is grpc.StatusCode.UNAVAILABLE
        assert ended_well, outcome.describe()
        if outcome.done is not None:
            assert outcome.done.finish_reason != chat_pb2.FINISH_REASON_QUOTA_EXHAUSTED, \
                outcome.describe()

    async def all_closed() -> list[int]:
        return [(await usage(mesh.auth_stub, user)).tokens_reserved for user in users]

    await eventually(all_closed, lambda held: held == [0] * STREAMS, within=20,
                     what="every hold settled or expired after Redis came back")

    async def shortfalls() -> list[int]:
        """delivered - charged per stream: a hold that expired while its settlement was
        still retrying is charged its checkpoint until the settlement lands."""
        return [outcome.delivered(prompt_tokens)
                - ((await usage(mesh.auth_stub, user)).tokens_used - baseline)
                for user, baseline, outcome in zip(users, baselines, outcomes, strict=True)]

    await eventually(shortfalls, lambda short: max(short) <= hold_step(MAX_TOKENS),
                     within=20, what="the settlements retried after Redis came back")
    for user, baseline, outcome in zip(users, baselines, outcomes, strict=True):
        charged = (await usage(mesh.auth_stub, user)).tokens_used - baseline
        delivered = outcome.delivered(prompt_tokens)
        assert 0 <= charged <= delivered, (charged, delivered, outcome.describe())
        assert delivered - charged <= hold_step(MAX_TOKENS), (
            charged, delivered, outcome.describe())
