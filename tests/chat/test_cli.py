"""`llmmesh chat` against the real auth and chat servers: streamed answers, the
conversation kept across lines, /new, and no session."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from llmmesh.chat.v1 import chat_pb2

from cli import chat_command
from cli.session import Endpoints, NotLoggedIn, Session
from tests.chat.openai_server import OpenAIServer
from tests.helpers import LoggedIn


def _args(stdin: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="llmmesh")
    chat_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["chat", *extra])
    args.stdin, args.stdout = io.StringIO(stdin), io.StringIO()
    return args


def _session(tmp_path: Path, auth_address: str, chat_port: int,
             user: LoggedIn | None) -> tuple[Endpoints, Session]:
    endpoints = Endpoints(auth=auth_address, chat=f"127.0.0.1:{chat_port}", document="")
    session = Session(tmp_path / "credentials.json", auth_address)
    if user is not None:
        session.save(user.tokens, user.user.username)
    return endpoints, session


async def test_an_interactive_session_streams_and_keeps_the_conversation(
        chat_server, auth_address: str, model_server: OpenAIServer, alice: LoggedIn,
        tmp_path: Path) -> None:
    args = _args("hello there\nand again\n/new\nfresh start\n/quit\nignored\n",
                 "--max-tokens", "20")
    endpoints, session = _session(tmp_path, auth_address, chat_server.port, alice)
    assert await chat_command.run(args, endpoints, session) == 0
    shown = args.stdout.getvalue()
    assert f"chatting as {alice.user.username}" in shown
    assert "echo> You said: hello there\n[" in shown
    assert "echo> You said: and again" in shown and "(new conversation)" in shown
    assert "ignored" not in shown
    _, second, third = (r.body["messages"] for r in model_server.seen)
    assert [m["content"] for m in second[1:]] == ["hello there", "You said: hello there",
                                                  "and again"]
    assert [m["content"] for m in third[1:]] == ["fresh start"]  # /new forgot the history
    assert all(r.body["max_completion_tokens"] == 20 for r in model_server.seen)


async def test_without_a_session_it_asks_for_a_login(chat_server, auth_address: str,
                                                     tmp_path: Path) -> None:
    endpoints, session = _session(tmp_path, auth_address, chat_server.port, None)
    with pytest.raises(NotLoggedIn, match="llmmesh login"):
        await chat_command.run(_args("hi\n"), endpoints, session)


class _Stream:
    """A StreamChat stub answering with fixed events, then the stream's end."""

    def __init__(self, *events: chat_pb2.StreamChatResponse) -> None:
        self.events = events

    def StreamChat(self, request: chat_pb2.StreamChatRequest,
                   metadata: object) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        async def answer() -> AsyncIterator[chat_pb2.StreamChatResponse]:
            for event in self.events:
                yield event
        return answer()


START = chat_pb2.StreamChatResponse(start=chat_pb2.StreamStart(
    conversation="conversations/c1", model="echo"))
DELTA = chat_pb2.StreamChatResponse(delta=chat_pb2.TokenDelta(text="half an ans"))


@pytest.mark.parametrize("events, cut", [
    ((START, DELTA), True),
    ((START, DELTA, chat_pb2.StreamChatResponse(done=chat_pb2.StreamDone(stored=True))), False),
    ((START, chat_pb2.StreamChatResponse(error=status_pb2.Status(code=14, message="x"))), False),
])
async def test_a_stream_that_ends_without_done_is_called_cut(
        events: tuple[chat_pb2.StreamChatResponse, ...], cut: bool) -> None:
    out = io.StringIO()
    conversation = chat_command.Conversation(
        _Stream(*events), (), chat_pb2.ChatOptions(), "", out)
    assert await conversation.send("question") is True
    assert ("the answer was cut off" in out.getvalue()) is cut
    assert "half an ans" in out.getvalue() or not cut


async def test_an_answer_not_saved_says_so() -> None:
    out = io.StringIO()
    done = chat_pb2.StreamChatResponse(done=chat_pb2.StreamDone(stored=False))
    await chat_command.Conversation(_Stream(START, DELTA, done), (), chat_pb2.ChatOptions(),
                                    "", out).send("q")
    assert "not saved to the conversation" in out.getvalue()


class _Broken:
    """StreamChat breaks (UNAVAILABLE) after two events; ResumeStreamChat serves the rest
    of the turn after the sequence asked for, once after a failed try."""

    def __init__(self) -> None:
        turn = "conversations/c1/turns/t1"
        self.events = [
            chat_pb2.StreamChatResponse(sequence=1, start=chat_pb2.StreamStart(
                conversation="conversations/c1", model="echo", turn=turn)),
            chat_pb2.StreamChatResponse(sequence=2, delta=chat_pb2.TokenDelta(text="half ")),
            chat_pb2.StreamChatResponse(sequence=3, delta=chat_pb2.TokenDelta(text="and rest")),
            chat_pb2.StreamChatResponse(sequence=4, done=chat_pb2.StreamDone(stored=True)),
        ]
        self.resumed: list[tuple[str, int]] = []

    def _answer(self, events: list[chat_pb2.StreamChatResponse], fail: bool
                ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        async def answer() -> AsyncIterator[chat_pb2.StreamChatResponse]:
            for event in events:
                yield event
            if fail:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "connection reset")
        return answer()

    def StreamChat(self, request: chat_pb2.StreamChatRequest,
                   metadata: object) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        return self._answer(self.events[:2], fail=True)

    def ResumeStreamChat(self, request: chat_pb2.ResumeStreamChatRequest,
                         metadata: object) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        self.resumed.append((request.name, request.after_sequence))
        if len(self.resumed) == 1:  # the first try fails before any event
            return self._answer([], fail=True)
        # Replays one event already shown: the CLI must not show it twice.
        return self._answer(self.events[request.after_sequence - 1:], fail=False)


async def test_a_broken_stream_is_resumed_after_the_last_event_shown() -> None:
    out = io.StringIO()
    stub = _Broken()
    conversation = chat_command.Conversation(stub, (), chat_pb2.ChatOptions(), "", out,  # type: ignore[arg-type]
                                             resume_delays=(0, 0, 0))
    assert await conversation.send("question") is True
    assert stub.resumed == [("conversations/c1/turns/t1", 2)] * 2
    shown = out.getvalue()
    assert "half and rest" in shown and shown.count("half") == 1
    assert "error" not in shown and "cut off" not in shown
