"""`llmmesh chat`: an interactive terminal chat over the public gRPC API.

Uses the session saved by `llmmesh login`, reads messages line by line, streams each
answer's tokens as they arrive, lists the sources it was grounded in, and keeps the
conversation going. `/new` starts a fresh conversation, `/quit` (or end of input)
leaves. A stream that breaks mid-answer is resumed from the last event received
(ResumeStreamChat, docs/streams.md), so the answer goes on where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterable
from typing import TextIO

import grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from cli.session import Endpoints, Session

PROMPT = "you> "
RESUME_DELAYS = (0.2, 1.0, 3.0)  # pauses before the tries to resume a broken stream
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
               ) -> argparse.ArgumentParser:
    """Register `chat` on the `llmmesh` command's subparsers."""
    parser = subparsers.add_parser("chat", help="interactive streaming chat",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model id (default: the server's)")
    parser.add_argument("--conversation", default="", help="conversations/{id} to continue")
    parser.add_argument("--rag", action="store_true", help="ground answers in your documents")
    parser.add_argument("--collection", default="", help="retrieve from this collection only")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.set_defaults(stdin=None, stdout=None)
    return parser


async def run(args: argparse.Namespace, endpoints: Endpoints, session: Session) -> int:
    """Run the chat loop; 0 on a clean exit, 1 when a call fails."""
    stdin: TextIO = args.stdin or sys.stdin
    out: TextIO = args.stdout or sys.stdout
    metadata = await session.metadata()
    async with grpc.aio.insecure_channel(endpoints.chat) as chat_channel:
        chat = Conversation(chat_pb2_grpc.ChatServiceStub(chat_channel), metadata,
                            _options(args), args.conversation, out)
        out.write(f"chatting as {session.load()['username']}; /new starts over, "
                  "/quit leaves\n")
        while (line := await _read_line(stdin, out)) is not None:
            text = line.strip()
            if text in {"/quit", "/exit"}:
                break
            if text == "/new":
                chat.conversation = ""
                out.write("(new conversation)\n")
            elif text and not await chat.send(text):
                return 1
    return 0


class Conversation:
    """One conversation: sends messages and renders their streamed answers."""

    def __init__(self, stub: chat_pb2_grpc.ChatServiceAsyncStub,
                 metadata: tuple[tuple[str, str], ...], options: chat_pb2.ChatOptions,
                 conversation: str, out: TextIO,
                 resume_delays: tuple[float, ...] = RESUME_DELAYS) -> None:
        self._stub = stub
        self._metadata = metadata
        self._options = options
        self.conversation = conversation
        self._out = out
        self._resume_delays = resume_delays

    async def send(self, message: str) -> bool:
        """Stream one answer; False when the call itself failed.

        An answer is complete only when its stream ends with `done` or `error`: a stream
        that stops without either, or breaks, once its turn is known is resumed after
        the last event received (a few tries); one that cannot be resumed was cut (a
        chat process lost mid-answer) and is said so.
        """
        request = chat_pb2.StreamChatRequest(message=message, conversation=self.conversation,
                                             options=self._options)
        stream: AsyncIterable[chat_pb2.StreamChatResponse] = self._stub.StreamChat(
            request, metadata=self._metadata)
        turn, last = "", 0
        tries = iter(self._resume_delays)
        while True:
            ended = False
            try:
                async for event in stream:
                    if event.sequence and event.sequence <= last:
                        continue  # already shown (never twice)
                    last = event.sequence or last
                    if event.WhichOneof("event") == "start":
                        turn = event.start.turn
                    self._render(event)
                    ended = ended or event.WhichOneof("event") in {"done", "error"}
            except grpc.aio.AioRpcError as error:
                delay = next(tries, None) if turn and error.code() in _RESUMABLE else None
                if delay is None:
                    self._out.write(f"\nerror: {error.code().name}: {error.details()}\n")
                    return error.code() not in {grpc.StatusCode.UNAUTHENTICATED,
                                                grpc.StatusCode.UNAVAILABLE}
            else:
                if ended:
                    return True
                delay = next(tries, None) if turn else None
                if delay is None:
                    self._out.write("\nerror: the answer was cut off (the stream ended "
                                    "without done); ask again\n")
                    return True
            await asyncio.sleep(delay)
            stream = self._stub.ResumeStreamChat(chat_pb2.ResumeStreamChatRequest(
                name=turn, after_sequence=last), metadata=self._metadata)

    def _render(self, event: chat_pb2.StreamChatResponse) -> None:
        out = self._out
        kind = event.WhichOneof("event")
        if kind == "start":
            self.conversation = event.start.conversation
            out.write(f"{event.start.model}> ")
        elif kind == "delta":
            out.write(event.delta.text)
        elif kind == "sources":
            found = event.sources.sources
            out.write("\n\nsources:" if found else "\n\n(no sources found)")
            for n, source in enumerate(found, 1):
                out.write(f"\n  [{n}] {source.filename}, chunk {source.chunk_index} "
                          f"(score {source.score:.2f}) {source.document}")
        elif kind == "done":
            usage = event.done.usage
            reason = chat_pb2.FinishReason.Name(event.done.finish_reason)
            note = "" if event.done.finish_reason == chat_pb2.FINISH_REASON_STOP else \
                f", stopped: {reason.removeprefix('FINISH_REASON_').lower()}"
            unsaved = "" if event.done.stored else ", not saved to the conversation"
            out.write(f"\n[{usage.total_tokens} tokens{note}{unsaved}]\n")
        elif kind == "error":
            out.write(f"\nerror: {event.error.message}\n")
        out.flush()


def _options(args: argparse.Namespace) -> chat_pb2.ChatOptions:
    options = chat_pb2.ChatOptions(model=args.model, use_rag=args.rag or bool(args.collection),
                                   collection=args.collection)
    if args.max_tokens is not None:
        options.max_tokens = args.max_tokens
    if args.temperature is not None:
        options.temperature = args.temperature
    return options


async def _read_line(stdin: TextIO, out: TextIO) -> str | None:
    """The next line (None at end of input), read without blocking the event loop."""
    out.write(PROMPT)
    out.flush()
    line = await asyncio.get_running_loop().run_in_executor(None, stdin.readline)
    if not line:
        out.write("\n")
        return None
    return line
