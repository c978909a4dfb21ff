"""Helpers for reading chat streams in tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmmesh.auth.v1 import auth_pb2
from llmmesh.chat.v1 import chat_pb2

from tests.helpers import LoggedIn


@dataclass
class Streamed:
    """A whole stream, sorted by event kind (with their order kept in `kinds`)."""

    kinds: list[str] = field(default_factory=list)
    start: chat_pb2.StreamStart | None = None
    deltas: list[str] = field(default_factory=list)
    sources: list[chat_pb2.Source] = field(default_factory=list)
    done: chat_pb2.StreamDone | None = None
    error: object = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def conversation(self) -> str:
        assert self.start is not None
        return self.start.conversation


async def stream_chat(stub, user: LoggedIn, message: str, conversation: str = "",
                      **options) -> Streamed:  # type: ignore[no-untyped-def]
    request = chat_pb2.StreamChatRequest(message=message, conversation=conversation,
                                         options=chat_pb2.ChatOptions(**options))
    seen = Streamed()
    async for event in stub.StreamChat(request, metadata=user.metadata):
        kind = event.WhichOneof("event")
        seen.kinds.append(kind)
        if kind == "start":
            seen.start = event.start
        elif kind == "delta":
            seen.deltas.append(event.delta.text)
        elif kind == "sources":
            seen.sources.extend(event.sources.sources)
        elif kind == "done":
            seen.done = event.done
        else:
            seen.error = event.error
    return seen


async def usage(auth_stub, user: LoggedIn) -> auth_pb2.Usage:  # type: ignore[no-untyped-def]
    return await auth_stub.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                                    metadata=user.metadata)
