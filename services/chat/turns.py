"""One chat turn from request to stored answer: the service's domain logic.

`prepare` does everything that can refuse a turn before it starts (validation,
the conversation, retrieval, the quota hold): its errors are ordinary statuses.
`run` then streams the answer's events; failures after the start become a
`Failed` event. Quota: the worst case (prompt estimate + max_tokens) is held
first; a stream that outgrows its hold asks for more and is cut off
(QUOTA_EXHAUSTED) when refused; when auth cannot answer at all the turn fails
(UNAVAILABLE), since that is no exhausted quota. The real usage is charged at the
end. A turn is stored only once it completed (cut-off turns included); a cancelled
or failed one stores nothing and is charged what it delivered (nothing at all frees
the hold). A streamed turn's consumer is its live turn (services/chat/live_turns.py),
which logs every event it takes: "delivered" is what was generated into the turn's
event log, whether or not a client read it.
A completed turn whose history write still fails after a few quick tries finishes
all the same, marked not stored: the answer was delivered and charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from services.chat import provider_gate
from services.chat.conversations import ConversationStore, MessageRecord, new_id
from services.chat.events import (
    Delta,
    Event,
    Failed,
    Finished,
    FinishReason,
    Source,
    SourcesFound,
    Started,
    Usage,
)
from services.chat.fallback import FallbackChain
from services.chat.prompts import HistoryMessage, build_messages
from services.chat.quota import Hold, QuotaClient
from services.chat.registry import ModelRegistry, RegisteredModel
from services.chat.relay import DeltaRelay
from services.chat.retrieval import DocumentSearch
from services.chat.tokens import count_prompt_tokens, estimate_prompt_tokens, tokens_in_bytes
from services.chat.validation import TurnRequest, validate_turn
from services.runtime import tracing
from services.runtime.context import request_id_var
from services.runtime.errors import Internal, LlmmeshError, NotFound
from services.runtime.provider_errors import provider_error
from services.runtime.storage_errors import storage_unavailable

log = logging.getLogger("llmmesh.chat")
# How long a finished turn waits for its settlement before saying done.
SETTLE_WAIT_SECONDS = 2.0

MIN_EXTENSION_TOKENS = 64
STORE_RETRY_DELAYS = (0.1, 0.3)  # pauses between the tries to store a turn (3 tries)
STORE_BUDGET_SECONDS = 1.0  # for all the tries together
STOP_RETRY_SECONDS = 0.2  # a model call not ended this long after a cancel is cancelled again
PROMPT_SCALE_WEIGHT = 0.2  # how much each finished turn moves a model's prompt scale


@dataclass
class PreparedTurn:
    """A validated, admitted turn, ready to generate."""

    user_id: str
    conversation_id: str
    is_new: bool
    model: RegisteredModel
    question: str
    messages: list[BaseMessage]
    sources: tuple[Source, ...] | None  # None without RAG
    call_options: dict[str, Any]
    prompt_estimate: int  # generous: sizes the hold
    prompt_tokens: int  # our count: charged when the model reports no usage
    max_tokens: int
    hold: Hold
    # The model call, started while the hold was being granted (provider_gate): for a
    # stream the task reading it into `relay`, for a unary answer the whole message.
    model_call: asyncio.Task[Any] | None = None
    generation: Generation = field(default_factory=lambda: Generation())
    relay: DeltaRelay = field(default_factory=DeltaRelay)
    charged: Usage | None = None  # what an unfinished turn was charged, once it was
    finishing: bool = False  # generation is over: settling and storing
    tail: str = ""  # text a cancelled stream read from the model but did not hand on
    # The model and its fallbacks (services/chat/fallback.py), and whether the first
    # text arrived (or the call ended): then the answering model is known.
    fallbacks: FallbackChain | None = None
    first_text: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def step(self) -> int:
        return hold_step(self.max_tokens)

    @property
    def answered_by(self) -> RegisteredModel:
        """The model answering (or that answered): the turn's own or a fallback."""
        return self.model if self.fallbacks is None else self.fallbacks.answering


@dataclass
class Generation:
    """What a turn produced so far.

    Completion tokens are counted over the delivered text as a whole (not chunk by
    chunk), so a streamed and a unary answer with the same text count the same.
    """

    parts: list[str] = field(default_factory=list)
    delivered_bytes: int = 0  # UTF-8 bytes of the text handed on (a stream: logged)
    accepted_bytes: int = 0  # read from the model and covered by the hold
    checkpointed: int = 0  # the last delivered total reported to auth
    provider_prompt_tokens: int = 0
    provider_completion_tokens: int = 0
    provider_usage: bool = False
    finish: FinishReason = FinishReason.STOP

    def observe(self, chunk: BaseMessage) -> None:
        """Record the usage and finish reason a model chunk or message reports."""
        usage = getattr(chunk, "usage_metadata", None)
        if usage:
            self.provider_usage = True
            self.provider_prompt_tokens += usage.get("input_tokens", 0)
            self.provider_completion_tokens += usage.get("output_tokens", 0)
        reason = chunk.response_metadata.get("finish_reason")
        if reason:
            self.finish = FinishReason.from_provider(reason)

    def deliver(self, text: str) -> None:
        self.parts.append(text)
        self.delivered_bytes += len(text.encode("utf-8"))

    @property
    def completion_tokens(self) -> int:
        """Our own count of the delivered completion."""
        return tokens_in_bytes(self.delivered_bytes)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def hold_step(max_tokens: int) -> int:
    """How far a hold grows at a time, and how much delivered output may go without a
    checkpoint: the most a turn can leave unbilled if its process dies."""
    return max(MIN_EXTENSION_TOKENS, max_tokens // 4)


class ChatEngine:
    """Prepares and runs turns for the servicer."""

    def __init__(self, registry: ModelRegistry, store: ConversationStore, quota: QuotaClient,
                 search: DocumentSearch, *, history_turns: int, max_message_chars: int,
                 store_retry_delays: Sequence[float] = STORE_RETRY_DELAYS,
                 store_budget_seconds: float = STORE_BUDGET_SECONDS,
                 on_charge: Callable[[str, Usage], None] | None = None) -> None:
        """`on_charge(model id, usage)` hears every charge a turn makes (metrics)."""
        self.registry = registry
        self.store = store
        self._quota = quota
        self._search = search
        self._history_turns = history_turns
        self._max_message_chars = max_message_chars
        self._store_retry_delays = tuple(store_retry_delays)
        self._store_budget = store_budget_seconds
        self._on_charge = on_charge
        # Per model: the model's prompt count over ours, learnt from finished turns, so a
        # turn charged by our count (cut, or cut off before the model's usage arrived)
        # pays its prompt as the model would have counted it.
        self._prompt_scale: dict[str, float] = {}

    async def usable_models(self, user_id: str) -> list[RegisteredModel]:
        """The models `user_id` may use: those their team allows (auth's
        QuotaService.GetEntitlements), every model outside a team."""
        allowed = await self._quota.allowed_models(user_id)
        return [m for m in self.registry.all() if allowed is None or m.spec.id in allowed]

    async def prepare(self, user_id: str, request: TurnRequest, *,
                      streamed: bool = True) -> PreparedTurn:
        """Refuse the turn (a status) or admit it: its hold granted and its model call
        started (streamed for `run`, one whole answer for `answer`). The call is
        prepared while the hold is being granted and its request sent only once it is
        (provider_gate): nothing reaches the provider for a turn that does not fit."""
        valid = validate_turn(request, self.registry, self._max_message_chars)
        options = request.options
        history_task = (self.store.history(user_id, valid.conversation_id, self._history_turns)
                        if valid.conversation_id else _no_history())
        search_task = (self._search.search(request.message, k=valid.top_k,
                                           collection=options.collection,
                                           documents=options.documents)
                       if options.use_rag else _no_sources())
        history, sources = await asyncio.gather(history_task, search_task)
        if history is None:
            raise NotFound("conversation", request.conversation)
        messages = build_messages(request.message, history, sources)
        estimate = estimate_prompt_tokens(str(m.content) for m in messages)
        call_options: dict[str, Any] = {"max_tokens": valid.max_tokens}
        if options.temperature is not None:
            call_options["temperature"] = options.temperature
        turn = PreparedTurn(
            user_id=user_id, conversation_id=valid.conversation_id or new_id(),
            is_new=valid.conversation_id is None, model=valid.model, question=request.message,
            messages=messages, sources=None if sources is None else tuple(sources),
            call_options=call_options, prompt_estimate=estimate,
            prompt_tokens=count_prompt_tokens(str(m.content) for m in messages),
            max_tokens=valid.max_tokens, hold=Hold("", 0),
            fallbacks=FallbackChain(self.registry.chain(valid.model)))
        # The hold is filled in before the gate opens: the call never sees it empty.
        reservation = asyncio.ensure_future(
            self._quota.reserve(user_id, estimate + valid.max_tokens, into=turn.hold,
                                model=valid.model.spec.id))
        with provider_gate.gate(reservation):
            turn.model_call = asyncio.create_task(
                self._read(turn) if streamed else self._invoke(turn))
        try:
            await reservation
        except BaseException:
            await _stop(turn.model_call)
            raise
        return turn

    async def run(self, turn: PreparedTurn) -> AsyncGenerator[Event, None]:
        """Started, Delta*, SourcesFound (RAG), then Finished or Failed.

        A task reads the model's stream (growing the hold ahead of what it reads) while
        this generator hands the text on: deltas coalesce when the consumer is slower
        than the model. Every hold step of delivered output is checkpointed with auth.
        The hold ends on every path: a consumer that goes away at any event (or a
        cancel) leaves the delivered part charged and the rest released.
        """
        reader = turn.model_call
        assert reader is not None, "a prepared turn has its model call"
        try:
            await _answering_known(turn, reader)
            yield Started(turn.conversation_id, turn.answered_by.spec.id)
        except BaseException:  # the consumer went away before any delta
            await _stop(reader)
            self._quota.release(turn.hold)
            turn.charged = Usage()
            raise
        started_ms = int(time.time() * 1000)
        generation, relay = turn.generation, turn.relay
        try:
            while (text := await relay.take()) is not None:
                generation.deliver(text)
                yield Delta(text)
                self._checkpoint(turn, generation)
            await reader  # the model's error, if it failed
        except Exception as error:  # noqa: BLE001 — every failure becomes a Failed event
            await _stop(reader)
            self._charge_partial(turn, generation)
            yield Failed(self._failure(error, turn))
            return
        except BaseException:  # cancelled, or the consumer went away
            await _stop(reader)
            # What the model sent that the consumer had not taken yet was generated too:
            # charged, and left for the consumer to log (`tail`).
            turn.tail = relay.take_nowait()
            if turn.tail:
                generation.deliver(turn.tail)
            self._charge_partial(turn, generation)
            raise
        async for event in self._finish(turn, generation, started_ms):
            yield event

    async def abandon(self, turn: PreparedTurn) -> None:
        """Drop a prepared turn that never ran: stop its model call, free its hold."""
        if turn.model_call is not None:
            await _stop(turn.model_call)
        self._quota.release(turn.hold)
        turn.charged = Usage()

    async def answer(self, turn: PreparedTurn) -> Finished:
        """The whole answer from one non-streamed model call (the hold already covers
        its worst case); raises the turn's error. Same content, usage, history and
        charge as `run` would give."""
        started_ms = int(time.time() * 1000)
        generation = turn.generation
        call = turn.model_call
        assert call is not None, "a prepared turn has its model call"
        try:
            message = await call
        except Exception as error:  # noqa: BLE001 — becomes the turn's status
            self._quota.release(turn.hold)
            raise self._failure(error, turn) from None
        except BaseException:  # cancelled: nothing was delivered
            await _stop(call)
            self._quota.release(turn.hold)
            raise
        text = message.content if isinstance(message.content, str) else ""
        if text:
            generation.deliver(text)
        generation.observe(message)
        finished: Finished | None = None
        async for event in self._finish(turn, generation, started_ms):
            if isinstance(event, Finished):
                finished = event
        assert finished is not None
        return finished

    async def _invoke(self, turn: PreparedTurn) -> BaseMessage:
        """The model's whole answer, from one non-streamed call."""
        assert turn.fallbacks is not None
        with self._model_span(turn, streamed=False) as span:
            _, message = await turn.fallbacks.invoke(turn.messages, turn.call_options)
            if span.is_recording():
                answered = Generation()
                answered.observe(message)
                text = message.content if isinstance(message.content, str) else ""
                answered.deliver(text)
                self._traced_usage(span, turn, answered)
            return message

    async def _read(self, turn: PreparedTurn) -> None:
        """Read the model's stream into the turn's relay, growing the hold ahead of
        the text."""
        generation, relay = turn.generation, turn.relay
        try:
            with self._model_span(turn, streamed=True) as span:
                try:
                    await self._stream_into(turn, generation, relay)
                finally:
                    self._traced_usage(span, turn, generation)
        finally:
            turn.first_text.set()
            relay.close()

    async def _stream_into(self, turn: PreparedTurn, generation: Generation,
                           relay: DeltaRelay) -> None:
        assert turn.fallbacks is not None
        # Closed at once when this task is cancelled, so the provider's request stops too.
        stream = turn.fallbacks.stream(turn.messages, turn.call_options)
        async with aclosing(stream) as chunks:
            async for _, chunk in chunks:
                turn.first_text.set()
                text = chunk.content if isinstance(chunk.content, str) else ""
                if text:
                    accepted = generation.accepted_bytes + len(text.encode("utf-8"))
                    needed = turn.prompt_estimate + tokens_in_bytes(accepted)
                    if needed > turn.hold.tokens and not await self._grow(
                            turn, needed, generation):
                        generation.finish = FinishReason.QUOTA_EXHAUSTED
                        break
                    generation.accepted_bytes = accepted
                    relay.put(text)
                generation.observe(chunk)

    @staticmethod
    def _model_span(turn: PreparedTurn, *, streamed: bool
                    ) -> contextlib.AbstractContextManager[tracing.Span]:
        """The model call's span (GenAI conventions; non-recording while tracing is off)."""
        if tracing.tracer() is None:
            return contextlib.nullcontext(tracing.INVALID_SPAN)
        spec = turn.model.spec
        model = spec.model or spec.id
        attributes = tracing.model_attributes("chat", spec.provider, model)
        attributes[tracing.GEN_AI_REQUEST_MAX_TOKENS] = turn.max_tokens
        attributes[tracing.GEN_AI_REQUEST_STREAM] = streamed
        temperature = turn.call_options.get("temperature")
        if temperature is not None:
            attributes[tracing.GEN_AI_REQUEST_TEMPERATURE] = temperature
        return tracing.span(f"chat {model}", attributes, kind=tracing.SpanKind.CLIENT)

    def _traced_usage(self, span: tracing.Span, turn: PreparedTurn,
                      generation: Generation) -> None:
        if span.is_recording():
            usage = self._usage(turn, generation)
            tracing.record_usage(span, usage.prompt_tokens, usage.completion_tokens,
                                 [generation.finish.value])

    async def _finish(self, turn: PreparedTurn, generation: Generation,
                      started_ms: int) -> AsyncGenerator[Event, None]:
        """Settle, then SourcesFound (RAG) and Finished once the turn is stored."""
        turn.finishing = True
        self._learn_prompt_scale(turn, generation)
        usage = self._usage(turn, generation)
        # Settled before anything else is yielded: the whole answer was delivered.
        settled = self._settle(turn, usage)
        if turn.sources is not None:
            yield SourcesFound(turn.sources)
        # Every token was delivered and charged: a failed history write does not fail
        # the turn, the Finished event says it was not stored (an empty message name).
        # The settlement travels meanwhile; done waits for it (usage read after done
        # includes the turn), but only so long: while auth is away it goes on retrying,
        # detached, and the client is not kept waiting for it.
        name = await self._store(turn, generation, usage, started_ms)
        await asyncio.wait({settled}, timeout=SETTLE_WAIT_SECONDS)
        yield Finished(usage=usage, finish_reason=generation.finish, message_name=name,
                       content=generation.text, create_time=time.time(),
                       sources=turn.sources or (), model=turn.answered_by.spec.id)

    async def _grow(self, turn: PreparedTurn, needed: int, generation: Generation) -> bool:
        """Grow the hold by a step, or at least by what is missing, checkpointing what
        was delivered so far: what a cut-off settle would charge now (nothing before
        the first token, as a release)."""
        short = needed - turn.hold.tokens
        step = max(short, turn.step)
        delivered = self._delivered(turn, generation)
        generation.checkpointed = max(generation.checkpointed, delivered)
        if await self._quota.extend(turn.hold, step, delivered):
            return True
        return step > short and await self._quota.extend(turn.hold, short, delivered)

    def _checkpoint(self, turn: PreparedTurn, generation: Generation) -> None:
        """Report the delivered total to auth every hold step (detached, best effort):
        a hold this process never settles expires charged at most a step too little."""
        delivered = self._delivered(turn, generation)
        if delivered - generation.checkpointed >= turn.step:
            generation.checkpointed = delivered
            self._quota.checkpoint(turn.hold, delivered)

    def _delivered(self, turn: PreparedTurn, generation: Generation) -> int:
        """What settling now would charge by our count (0 before the first token)."""
        if not generation.delivered_bytes:
            return 0
        return self._prompt_count(turn) + generation.completion_tokens

    def _usage(self, turn: PreparedTurn, generation: Generation) -> Usage:
        """The provider's usage when it reported one for a complete answer, else ours."""
        if generation.provider_usage and generation.finish is not FinishReason.QUOTA_EXHAUSTED:
            return Usage(generation.provider_prompt_tokens, generation.provider_completion_tokens)
        return Usage(self._prompt_count(turn), generation.completion_tokens)

    def _prompt_count(self, turn: PreparedTurn) -> int:
        """The turn's prompt as its model counts prompts (our count where the model
        has not reported any usage yet)."""
        scale = self._prompt_scale.get(turn.answered_by.spec.id)
        return turn.prompt_tokens if scale is None else round(turn.prompt_tokens * scale)

    def _learn_prompt_scale(self, turn: PreparedTurn, generation: Generation) -> None:
        if not (generation.provider_usage and turn.prompt_tokens > 0
                and generation.finish is not FinishReason.QUOTA_EXHAUSTED):
            return
        ratio = min(max(generation.provider_prompt_tokens / turn.prompt_tokens, 0.25), 4.0)
        previous = self._prompt_scale.get(turn.answered_by.spec.id)
        self._prompt_scale[turn.answered_by.spec.id] = (
            ratio if previous is None else previous + PROMPT_SCALE_WEIGHT * (ratio - previous))

    def _charge_partial(self, turn: PreparedTurn, generation: Generation) -> None:
        """Charge an unfinished turn what it delivered (nothing: release the hold); a
        stream's consumer logs every delta it takes, so all of them count."""
        if not generation.delivered_bytes:
            self._quota.release(turn.hold)
            turn.charged = Usage()
        else:
            turn.charged = self._usage(turn, generation)
            self._settle(turn, turn.charged)

    def _settle(self, turn: PreparedTurn, usage: Usage) -> asyncio.Task[None]:
        if self._on_charge is not None:
            self._on_charge(turn.answered_by.spec.id, usage)
        return self._quota.settle(turn.hold, usage.total_tokens)

    def _failure(self, error: Exception, turn: PreparedTurn) -> LlmmeshError:
        mapped = provider_error(error, turn.answered_by.spec.id)
        if mapped is not None:
            return mapped
        log.error("chat turn failed", exc_info=error)
        return Internal(f"internal error (request id {request_id_var.get()})")

    async def _store(self, turn: PreparedTurn, generation: Generation, usage: Usage,
                     started_ms: int) -> str:
        """The stored answer's name; empty when the turn could not be stored (the
        conversation was deleted while answering, or every try to write it failed)."""
        answer_id = new_id()
        question = MessageRecord(new_id(), "user", turn.question, started_ms)
        answer = MessageRecord(answer_id, "assistant", generation.text,
                               int(time.time() * 1000), model=turn.answered_by.spec.id,
                               sources=turn.sources or (), usage=usage)
        try:
            async with asyncio.timeout(self._store_budget):
                stored = await self._append(turn, question, answer)
        except Exception as error:  # TimeoutError (the budget) included
            outage = isinstance(error, TimeoutError) or storage_unavailable(error) is not None
            # Storage down or too slow is no bug of ours: a warning, not a traceback.
            log.log(logging.WARNING if outage else logging.ERROR,
                    "storing a delivered turn failed; finishing it unstored",
                    exc_info=None if outage else error,
                    extra={"conversation": turn.conversation_id,
                           "error": type(error).__name__})
            return ""
        if not stored:  # the conversation was deleted while answering
            return ""
        return f"conversations/{turn.conversation_id}/messages/{answer_id}"

    async def _append(self, turn: PreparedTurn, question: MessageRecord,
                      answer: MessageRecord) -> bool:
        """Append the turn, retrying briefly; the same records each time, and the
        store skips a turn already appended (a try whose reply was lost)."""
        for delay in self._store_retry_delays:
            try:
                return await self.store.append_turn(turn.user_id, turn.conversation_id,
                                                    is_new=turn.is_new, question=question,
                                                    answer=answer)
            except Exception as error:  # noqa: BLE001 — retried, then raised
                log.warning("storing a turn failed; retrying", extra={
                    "conversation": turn.conversation_id, "error": type(error).__name__})
            await asyncio.sleep(delay)
        return await self.store.append_turn(turn.user_id, turn.conversation_id,
                                            is_new=turn.is_new, question=question,
                                            answer=answer)


async def _answering_known(turn: PreparedTurn, reader: asyncio.Task[Any]) -> None:
    """Wait until the answering model is known: at once without fallbacks, else at the
    first text (or the end of the call: then the last model tried failed)."""
    if turn.fallbacks is None or len(turn.fallbacks.models) == 1:
        return
    known = asyncio.ensure_future(turn.first_text.wait())
    try:
        await asyncio.wait({known, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        known.cancel()


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended (its provider request closed). The
    cancel is repeated while the task runs on: one was seen lost inside the provider
    client (Python 3.11), leaving the model's stream read to its end."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_RETRY_SECONDS)


async def _no_history() -> list[HistoryMessage]:
    return []


async def _no_sources() -> Sequence[Source] | None:
    return None
