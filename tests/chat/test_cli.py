"""`llmmesh chat` against the real auth and chat servers: streamed answers, the
conversation kept across lines, /new, and no session."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

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
