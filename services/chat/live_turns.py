"""Streamed turns that run detached from the call that started them.

A `LiveTurn` consumes the engine's events for one turn, numbers them (1-based, without
gaps), keeps them in memory for the call that started it (which reads them from there:
no Redis round trip in front of a delta) and writes them to the turn's log in Redis
(services/chat/turn_log.py) for resumers: one pipelined write at a time, carrying every
event produced meanwhile, so a fast model's deltas share a round trip. While its caller
reads, the turn takes the model's text at the caller's pace, so deltas coalesce for a
slow client as before (services/chat/relay.py); with no caller it takes it as it comes.

The turn outlives its caller: when no one reads it (the caller gone and no resumer
attached, on any process) for the disconnect grace period, it is cancelled; so it is
at once when CancelTurn asks (on this process directly, from another one through the
log's cancel flag, which the turn reads with each write and heartbeat), and when the
server stops. A cancelled turn ends with a done event whose finish reason is CANCELLED
and is charged what it generated (services/chat/turns.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from llmmesh.chat.v1 import chat_pb2

from services.chat.conversations import new_id
from services.chat.events import Delta, Event, Failed, Finished, FinishReason, Usage
from services.chat.turn_log import TurnLog, TurnMeta
from services.chat.turns import ChatEngine, PreparedTurn
from services.chat.wire import is_final, stream_event
from services.runtime.errors import FieldViolation, Internal, LlmmeshError, NotFound, Unavailable

log = logging.getLogger("llmmesh.chat.turns")

FINAL_WRITE_TRIES = 3  # tries to log an ended turn's last events before giving up
# How long a log write waits for more events to join it (not the final one): a turn's
# deltas reach Redis in a few pipelined writes, not one per delta; resumers read them
# that much later at most.
LOG_LINGER_SECONDS = 0.1
MAX_BLOCK_SECONDS = 2.0  # a resumer's XREAD BLOCK, well within the Redis call timeout
JUST_STARTED_SECONDS = 0.1  # a missing turn record is looked up again after this
MIN_ATTACHMENT_SECONDS = 2.0  # how long a resumer's attachment lasts unless renewed


@dataclass(frozen=True)
class TurnSettings:
    resume_ttl_seconds: int = 3600  # how long a turn's log is kept after its last write
    disconnect_grace_seconds: float = 30.0  # unread this long: cancelled
    heartbeat_seconds: float = 0.5  # lease renewal, cancel flag and readers check


class SequenceOutOfRange(LlmmeshError):
    """A resume after a sequence the (ended) turn never reached."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "SEQUENCE_OUT_OF_RANGE"

    def __init__(self, after: int, last: int) -> None:
        super().__init__(f"after_sequence {after} is past the turn's last event ({last})",
                         metadata={"last_sequence": str(last)})
        self.violation = FieldViolation("after_sequence", f"must be at most {last}")

    def details(self) -> list[Message]:
        return [error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=self.violation.field, description=self.violation.description)])]


def turn_name(conversation_id: str, turn_id: str) -> str:
    return f"conversations/{conversation_id}/turns/{turn_id}"


class LiveTurn:
    """One running turn: its events so far and the tasks that produce and log them."""

    def __init__(self, turn_id: str, turn: PreparedTurn, hub: TurnHub) -> None:
        self.id = turn_id
        self.user_id = turn.user_id
        self.name = turn_name(turn.conversation_id, turn_id)
        self.events: list[chat_pb2.StreamChatResponse] = []
        self._readers: dict[object, int] = {}  # local readers -> events they have taken
        self.ended = asyncio.Event()
        self._turn = turn
        self._hub = hub
        self._grown = asyncio.Event()
        self._readers_changed = asyncio.Event()
        self._progress = asyncio.Event()
        self._cancel_reason: str | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._consuming = False
        self._pending: list[tuple[int, bytes, bool]] = []  # not yet logged
        self._uncertain = False  # a failed write may have logged part of its batch
        self._opened = False  # the log's record of the turn is written
        self._writer: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._final = asyncio.Event()  # the final event is published
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def readers(self) -> int:
        """Local readers (the caller that started the turn, while it reads)."""
        return len(self._readers)

    async def follow(self, after: int = 0) -> AsyncGenerator[chat_pb2.StreamChatResponse, None]:
        """The events after sequence `after`, live, until the final one."""
        reader = object()
        self._readers[reader] = after
        try:
            index = after
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    yield event
                    self._readers[reader] = index  # taken: the transport wrote it
                    self._progress.set()
                    if is_final(event):
                        return
                await self._grown.wait()
        finally:
            del self._readers[reader]
            self._progress.set()
            self._readers_changed.set()  # the watchdog looks at once

    def cancel(self, reason: str) -> None:
        """Stop generating now (unless the turn is already finishing)."""
        if self._cancel_reason is not None or self._turn.finishing or self.ended.is_set():
            return
        self._cancel_reason = reason
        log.info("cancelling a turn", extra={"turn": self.name, "reason": reason})
        if self._consumer is not None:
            self._consumer.cancel()

    async def _run(self) -> None:
        turn = self._turn
        # Written alongside the start event, not before it (no Redis round trip before
        # the first token); a resumer that is faster looks again (TurnHub.resume).
        self._opening = asyncio.create_task(self._open_first())
        watchdog = asyncio.create_task(self._watch())
        self._consumer = asyncio.create_task(self._consume())
        if self._cancel_reason is not None:
            self._consumer.cancel()
        try:
            await asyncio.wait({self._consumer})
            if not self._consuming:  # cancelled before it began: nothing generated
                await self._hub.engine.abandon(turn)
            if turn.tail:  # read from the model, not yet handed on: charged, so logged
                self._publish(Delta(turn.tail))
            if not self.events or not is_final(self.events[-1]):
                self._publish(self._ending())
        finally:
            self.ended.set()
            self._grown.set()
            # Ends the watchdog: a cancel alone was seen lost (taken for its wait's
            # timeout, Python 3.11), leaving it beating for an ended turn.
            self._readers_changed.set()
            watchdog.cancel()
        if self._writer is not None:
            await asyncio.wait({self._writer})

    async def _open_first(self) -> None:
        try:
            await self._open()
        except Exception as error:  # noqa: BLE001 — the caller still gets its answer
            log.warning("could not open a turn's log; retried with its first write",
                        extra={"turn": self.name, "error": type(error).__name__})

    async def _open(self) -> None:
        turn = self._turn
        await self._hub.log.open(self.id, turn.user_id, turn.conversation_id)
        self._opened = True

    def _ending(self) -> Event:
        """The final event of a turn the engine did not end itself."""
        if self._cancel_reason is not None:
            usage = self._turn.charged or Usage()
            return Finished(usage=usage, finish_reason=FinishReason.CANCELLED, message_name="",
                            content=self._turn.generation.text,
                            model=self._turn.answered_by.spec.id)
        assert self._consumer is not None
        error = self._consumer.exception() if not self._consumer.cancelled() else None
        log.error("a turn ended without its final event", exc_info=error,
                  extra={"turn": self.name})
        return Failed(Internal("internal error: the turn ended unexpectedly"))

    async def _consume(self) -> None:
        self._consuming = True
        async with aclosing(self._hub.engine.run(self._turn)) as events:
            async for event in events:
                self._publish(event)
                await self._keep_pace()

    async def _keep_pace(self) -> None:
        """Wait until the local readers have taken every event (none: at once)."""
        while any(taken < len(self.events) for taken in self._readers.values()):
            self._progress.clear()
            await self._progress.wait()

    def _publish(self, event: Event) -> None:
        message = stream_event(event, len(self.events) + 1, self.name)
        self.events.append(message)
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()
        final = is_final(message)
        self._pending.append((message.sequence, message.SerializeToString(), final))
        if final:
            self._final.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        """Log the pending events, a batch a round trip (what came within the linger
        time), until none is left."""
        failures = 0
        while self._pending:
            if not self._final.is_set():
                try:
                    async with asyncio.timeout(LOG_LINGER_SECONDS):
                        await self._final.wait()
                except TimeoutError:
                    pass
            try:
                if self._opening is not None:
                    await asyncio.wait({self._opening})
                if not self._opened:
                    await self._open()
                if self._uncertain:
                    logged = await self._hub.log.last_logged(self.id)
                    self._pending = [entry for entry in self._pending if entry[0] > logged]
                    self._uncertain = False
                    continue
                batch = [(sequence, payload) for sequence, payload, _ in self._pending]
                cancel = await self._hub.log.append(self.id, batch,
                                                    final=self._pending[-1][2])
            except Exception as error:  # noqa: BLE001 — retried; the caller is unaffected
                failures += 1
                self._uncertain = True
                if self.ended.is_set() and failures >= FINAL_WRITE_TRIES:
                    log.error("could not log a turn's last events; resumers will see it "
                              "end unavailable", extra={"turn": self.name,
                                                        "error": type(error).__name__})
                    self._pending.clear()
                    return
                log.warning("logging a turn's events failed; retrying",
                            extra={"turn": self.name, "error": type(error).__name__})
                await asyncio.sleep(min(self._hub.settings.heartbeat_seconds * failures, 2.0))
                continue
            failures = 0
            del self._pending[:len(batch)]
            if cancel:
                self.cancel("cancel requested")

    async def _watch(self) -> None:
        """Renew the turn's lease; cancel it when asked or when no one has read it for
        the grace period."""
        settings = self._hub.settings
        unread_since: float | None = None
        wait = settings.heartbeat_seconds
        while not self.ended.is_set():
            try:
                async with asyncio.timeout(wait):
                    await self._readers_changed.wait()
            except TimeoutError:
                pass
            if self.ended.is_set():
                return
            self._readers_changed.clear()
            try:
                pulse = await self._hub.log.pulse(self.id)
            except Exception as error:  # noqa: BLE001 — cannot tell: keep running
                log.warning("a turn's heartbeat failed", extra={
                    "turn": self.name, "error": type(error).__name__})
                pulse = None
            if pulse is not None and pulse.cancel_requested:
                self.cancel("cancel requested")
                return
            now = time.monotonic()
            if self.readers or pulse is None or pulse.readers:
                unread_since = None
            elif unread_since is None:
                unread_since = now
            elif now - unread_since >= settings.disconnect_grace_seconds:
                self.cancel("no reader within the disconnect grace period")
                return
            wait = settings.heartbeat_seconds
            if unread_since is not None:
                wait = min(wait, max(unread_since + settings.disconnect_grace_seconds - now,
                                     0.0) + 0.001)


class TurnHub:
    """This process's live turns, and resume and cancel for any process's."""

    def __init__(self, engine: ChatEngine, turn_log: TurnLog, settings: TurnSettings) -> None:
        self.engine = engine
        self.log = turn_log
        self.settings = settings
        self._live: dict[str, LiveTurn] = {}

    def start(self, turn: PreparedTurn) -> LiveTurn:
        """Run `turn` detached; the caller reads it with `follow()`."""
        live = LiveTurn(new_id(), turn, self)
        self._live[live.id] = live
        live.task.add_done_callback(lambda _task: self._live.pop(live.id, None))
        return live

    async def cancel(self, user_id: str, conversation_id: str, turn_id: str) -> None:
        """Stop the turn, wherever it runs; NotFound for another user's or an expired
        turn; nothing for one that already ended."""
        name = turn_name(conversation_id, turn_id)
        live = self._live.get(turn_id)
        if live is not None and live.user_id == user_id and live.name == name:
            live.cancel("cancel requested")
            await live.ended.wait()
            return
        meta = await self._meta(turn_id)
        if meta is None or meta.user_id != user_id or meta.conversation_id != conversation_id:
            raise NotFound("turn", name)
        if not meta.ended:
            await self.log.request_cancel(turn_id)

    async def resume(self, user_id: str, conversation_id: str, turn_id: str, after: int
                     ) -> AsyncGenerator[chat_pb2.StreamChatResponse, None]:
        """Every event after sequence `after`, each once, live while the turn runs (on
        any process), read from its log."""
        name = turn_name(conversation_id, turn_id)
        meta = await self._meta(turn_id)
        if meta is None or meta.user_id != user_id or meta.conversation_id != conversation_id:
            raise NotFound("turn", name)
        if meta.ended and after > meta.last_sequence:
            raise SequenceOutOfRange(after, meta.last_sequence)
        if meta.ended and after == meta.last_sequence:
            return
        heartbeat = self.settings.heartbeat_seconds
        block = min(heartbeat, MAX_BLOCK_SECONDS)
        # Renewed every heartbeat; generous, so a busy loop's late renewal does not
        # leave the turn looking unread.
        attachment = max(4 * heartbeat, MIN_ATTACHMENT_SECONDS)
        reader = new_id()
        cursor = after
        attached_at = time.monotonic()
        await self.log.attach(turn_id, reader, attachment)
        try:
            while True:
                found = await self.log.read(turn_id, cursor, block)
                for sequence, payload in found:
                    message = chat_pb2.StreamChatResponse.FromString(payload)
                    cursor = sequence
                    yield message
                    if is_final(message):
                        return
                if time.monotonic() - attached_at >= heartbeat:
                    attached_at = time.monotonic()
                    await self.log.attach(turn_id, reader, attachment)
                if found:
                    continue
                meta = await self.log.meta(turn_id)
                if meta is not None and meta.ended:
                    if cursor >= meta.last_sequence:
                        return
                    continue
                if meta is None or not await self.log.alive(turn_id):
                    # Its process went away before the end: the turn will never go on.
                    yield stream_event(Failed(Unavailable(
                        "the turn stopped: the chat process running it went away",
                        reason="TURN_LOST")), 0, name)
                    return
        finally:
            try:
                await self.log.detach(turn_id, reader)
            except Exception:  # noqa: BLE001 — the attachment lapses on its own
                log.debug("detaching a resumer failed", extra={"turn": name})

    async def _meta(self, turn_id: str) -> TurnMeta | None:
        """The turn's record; looked up twice when missing, as a turn's record is
        written alongside its start event (a client may hold the event a moment
        before the record exists)."""
        meta = await self.log.meta(turn_id)
        if meta is None:
            await asyncio.sleep(JUST_STARTED_SECONDS)
            meta = await self.log.meta(turn_id)
        return meta

    async def drain(self, within: float) -> None:
        """At shutdown: cancel the turns still running (charged what they generated, a
        cancelled final event logged) and wait, at most `within` s, for them to end."""
        turns = list(self._live.values())
        if not turns:
            return
        for live in turns:
            live.cancel("the server is stopping")
        _, pending = await asyncio.wait([live.task for live in turns], timeout=within)
        if pending:
            log.warning("turns still ending at shutdown", extra={"turns": len(pending)})
