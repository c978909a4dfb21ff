"""ChatEngine (services/chat/turns.py) with fakes at its seams: a scripted LangChain
chat model, an in-memory conversation store, a fake quota peer and fake search.
No sockets; one test runs the real ConversationStore on the session's Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import timestamp_pb2
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from llmmesh.auth.v1 import quota_pb2
from redis.asyncio import Redis

from services.chat.conversations import ConversationStore, MessageRecord
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
from services.chat.prompts import NO_SOURCES
from services.chat.quota import LATE_SETTLE_SECONDS, Hold, QuotaClient, quota_unavailable
from services.chat.tokens import count_prompt_tokens, count_tokens, estimate_prompt_tokens
from services.chat.turns import MIN_EXTENSION_TOKENS, ChatEngine, PreparedTurn
from services.chat.validation import TurnOptions, TurnRequest
from services.runtime.context import request_id_var
from services.runtime.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from tests.unit.chat_fakes import (
    FakeConversationStore,
    FakeQuota,
    FakeRegistry,
    FakeSearch,
    ScriptedChatModel,
    model_spec,
)
from tests.unit.conftest import new_user

USER = "a" * 32
OTHER = "b" * 32
CONVERSATION = "c" * 32
SOURCES = (
    Source("documents/" + "1" * 32, "alpha.txt", 0, 0.91, "Alpha is the first letter."),
    Source("documents/" + "2" * 32, "beta.md", 3, 0.72, "Beta comes second."),
)


@dataclass
class Rig:
    engine: ChatEngine
    model: ScriptedChatModel
    store: FakeConversationStore
    quota: FakeQuota
    search: FakeSearch


def rig(model: ScriptedChatModel, *, store: FakeConversationStore | None = None,
        quota: FakeQuota | None = None, search: FakeSearch | None = None,
        history_turns: int = 3, default_max_tokens: int = 64) -> Rig:
    store = store or FakeConversationStore()
    quota = quota or FakeQuota()
    search = search or FakeSearch(SOURCES)
    registry = FakeRegistry((model_spec(default_max_tokens=default_max_tokens), model))
    engine = ChatEngine(registry, store, quota, search, history_turns=history_turns,
                        max_message_chars=1000, store_retry_delays=(0.0, 0.0))
    return Rig(engine, model, store, quota, search)


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def run_turn(r: Rig, request: TurnRequest, user: str = USER
                   ) -> tuple[PreparedTurn, list[Event]]:
    turn = await r.engine.prepare(user, request)
    return turn, await collect(r.engine.run(turn))


def open_run(r: Rig, turn: PreparedTurn) -> AsyncGenerator[Event, None]:
    """run() is an async generator, annotated as an AsyncIterator: closable here."""
    return cast(AsyncGenerator[Event, None], r.engine.run(turn))


def kinds(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def deltas(events: Sequence[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Delta)]


def finished(events: Sequence[Event]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished), f"turn did not finish: {last!r}"
    return last


def failed(events: Sequence[Event]) -> Failed:
    last = events[-1]
    assert isinstance(last, Failed), f"turn did not fail: {last!r}"
    return last


def local_usage(messages: Sequence[BaseMessage], parts: Sequence[str]) -> Usage:
    return Usage(count_prompt_tokens(str(m.content) for m in messages),
                 count_tokens("".join(parts)))


# --- a turn: events, usage, storage -------------------------------------------------

async def test_turn_streams_deltas_then_finished_with_usage_and_is_stored() -> None:
    r = rig(ScriptedChatModel(parts=["Hello", " there", ", world."]))
    turn, events = await run_turn(r, TurnRequest("Say hello"))

    assert kinds(events) == ["Started", "Delta", "Delta", "Delta", "Finished"]
    assert events[0] == Started(turn.conversation_id, "scripted")
    assert deltas(events) == ["Hello", " there", ", world."]
    done = finished(events)
    assert done.content == "Hello there, world."
    assert done.finish_reason is FinishReason.STOP
    assert done.usage == local_usage(turn.messages, ["Hello", " there", ", world."])
    assert done.sources == ()
    (question, answer) = r.store.conversations[(USER, turn.conversation_id)].messages
    assert (question.role, question.content) == ("user", "Say hello")
    assert (answer.role, answer.content, answer.usage) == (
        "assistant", "Hello there, world.", done.usage)
    assert done.message_name == f"conversations/{turn.conversation_id}/messages/{answer.id}"
    assert turn.is_new and len(turn.conversation_id) == 32


async def test_model_gets_the_prompt_and_call_options() -> None:
    r = rig(ScriptedChatModel(parts=["ok"]), default_max_tokens=50)
    await run_turn(r, TurnRequest("What now?", options=TurnOptions(temperature=0.3)))

    ((messages, options),) = r.model.calls
    assert isinstance(messages[0], SystemMessage)
    assert isinstance(messages[-1], HumanMessage) and messages[-1].content == "What now?"
    assert options["max_tokens"] == 50 and options["temperature"] == 0.3
    explicit = rig(ScriptedChatModel(parts=["ok"]))
    await run_turn(explicit, TurnRequest("Hi", options=TurnOptions(max_tokens=7)))
    ((_, options),) = explicit.model.calls
    assert options == {"max_tokens": 7}  # no temperature unless asked


async def test_provider_usage_and_finish_reason_win_over_local_counts() -> None:
    r = rig(ScriptedChatModel(parts=["a", "b"], usage={"input": 321, "output": 9},
                              finish_reason="length"))
    _, events = await run_turn(r, TurnRequest("Count"))

    done = finished(events)
    assert done.usage == Usage(321, 9)
    assert done.finish_reason is FinishReason.LENGTH
    assert r.quota.only_hold().state == "settled"
    assert r.quota.only_hold().charged == 330


async def test_empty_chunks_are_not_deltas() -> None:
    r = rig(ScriptedChatModel(parts=["", "x", ""]))
    _, events = await run_turn(r, TurnRequest("Hi"))
    assert deltas(events) == ["x"]
    assert finished(events).content == "x"


# --- RAG ---------------------------------------------------------------------------

async def test_rag_sources_follow_the_deltas_and_reach_prompt_answer_and_store() -> None:
    r = rig(ScriptedChatModel(parts=["Alpha [1]."]))
    options = TurnOptions(use_rag=True, rag_top_k=2, collection="notes",
                          documents=("documents/" + "1" * 32,))
    turn, events = await run_turn(r, TurnRequest("Which letter is first?", options=options))

    assert kinds(events) == ["Started", "Delta", "SourcesFound", "Finished"]
    assert events[2] == SourcesFound(SOURCES)
    assert finished(events).sources == SOURCES
    assert r.search.calls == [{"question": "Which letter is first?", "k": 2,
                               "collection": "notes", "documents": ["documents/" + "1" * 32]}]
    system = str(turn.messages[0].content)
    assert "[1] alpha.txt, chunk 0\nAlpha is the first letter." in system
    assert "[2] beta.md, chunk 3\nBeta comes second." in system
    (_, answer) = r.store.conversations[(USER, turn.conversation_id)].messages
    assert [s.document for s in answer.sources] == [s.document for s in SOURCES]


async def test_rag_with_nothing_found_says_so_and_sends_empty_sources() -> None:
    r = rig(ScriptedChatModel(parts=["I cannot tell."]), search=FakeSearch([]))
    turn, events = await run_turn(r, TurnRequest("Q?", options=TurnOptions(use_rag=True)))

    assert r.search.calls[0]["k"] == 4  # the default top k
    assert events[-2] == SourcesFound(())
    assert NO_SOURCES in str(turn.messages[0].content)


async def test_without_rag_nothing_is_searched() -> None:
    r = rig(ScriptedChatModel(parts=["ok"]))
    turn, events = await run_turn(r, TurnRequest("Q?"))
    assert r.search.calls == []
    assert turn.sources is None
    assert "SourcesFound" not in kinds(events)


async def test_a_failing_search_refuses_the_turn_before_any_hold() -> None:
    outage = Unavailable("document service failed", reason="DOCUMENT_UNAVAILABLE")
    r = rig(ScriptedChatModel(parts=["never"]), search=FakeSearch(fail_with=outage))
    with pytest.raises(Unavailable):
        await r.engine.prepare(USER, TurnRequest("Q?", options=TurnOptions(use_rag=True)))
    assert r.quota.holds == {}
    assert r.model.calls == []


# --- quota: reserve, extend, cut off, settle, release -------------------------------

async def test_the_worst_case_is_held_before_generating_and_the_real_usage_settled() -> None:
    model = ScriptedChatModel(parts=["one", " two"])

    class SlowQuota(FakeQuota):
        """Grants after the event loop ran a while: the model must not be called
        meanwhile (its call is prepared, and starts only once the hold is granted)."""

        async def reserve(self, user_id: str, tokens: int, into: Hold | None = None,
                          **options: str) -> Hold:
            for _ in range(20):
                await asyncio.sleep(0)
            assert model.calls == [], "the model was called before the hold was granted"
            return await super().reserve(user_id, tokens, into, **options)

    r = rig(model, quota=SlowQuota(), default_max_tokens=40)
    turn = await r.engine.prepare(USER, TurnRequest("Hold first"))

    hold = r.quota.only_hold()
    estimate = estimate_prompt_tokens(str(m.content) for m in turn.messages)
    assert (hold.user_id, hold.held, hold.state) == (USER, estimate + 40, "held")
    assert turn.prompt_estimate == estimate

    events = await collect(r.engine.run(turn))
    done = finished(events)
    assert hold.state == "settled"
    assert hold.charged == done.usage.total_tokens < estimate + 40
    assert r.quota.used[USER] == done.usage.total_tokens
    assert r.quota.extend_requests == []
    await r.quota.drain()


async def test_a_turn_that_does_not_fit_is_refused_before_generating() -> None:
    r = rig(ScriptedChatModel(parts=["never"]), quota=FakeQuota(limit=10))
    with pytest.raises(ResourceExhausted):
        await r.engine.prepare(USER, TurnRequest("Too big for the budget"))
    assert r.model.calls == []
    assert r.store.conversations == {}


async def test_an_answer_that_outgrows_its_hold_extends_it_by_a_comfortable_step() -> None:
    parts = ["abcd"] * 10  # one local token each
    r = rig(ScriptedChatModel(parts=parts))
    turn, events = await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=2)))

    assert r.quota.extend_requests == [MIN_EXTENSION_TOKENS]  # once, at the third part
    hold = r.quota.only_hold()
    assert hold.extensions == [MIN_EXTENSION_TOKENS]
    assert turn.hold.tokens == turn.prompt_estimate + 2 + MIN_EXTENSION_TOKENS
    done = finished(events)
    assert done.finish_reason is FinishReason.STOP
    assert done.content == "abcd" * 10
    assert hold.state == "settled" and hold.charged == done.usage.total_tokens
    # the checkpoint is what was delivered before the part that needed more room
    assert hold.checkpoints == [local_usage(turn.messages, ["abcd"] * 2).total_tokens]
    assert hold.checkpoints[0] <= hold.charged


async def test_an_extension_before_any_token_checkpoints_nothing() -> None:
    r = rig(ScriptedChatModel(parts=["x" * 400]))  # 100 local tokens, past max_tokens
    await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=2)))
    assert r.quota.only_hold().checkpoints == [0]


async def test_the_extension_step_scales_with_max_tokens() -> None:
    parts = ["x" * 400] * 4  # 100 local tokens each
    r = rig(ScriptedChatModel(parts=parts))
    await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=300)))
    # 4th part needs 400 > 300 held: short 100, step max(100, 64, 300 // 4 = 75)
    assert r.quota.extend_requests == [100]


async def test_when_the_step_is_refused_only_the_missing_tokens_are_asked() -> None:
    parts = ["abcd"] * 12
    quota = FakeQuota()
    r = rig(ScriptedChatModel(parts=parts), quota=quota)
    turn = await r.engine.prepare(USER, TurnRequest("Long", options=TurnOptions(max_tokens=2)))
    quota.limit = quota.only_hold().held + 5  # room for five more tokens after the hold

    events = await collect(r.engine.run(turn))

    # five parts get the missing token after the step is refused; the sixth gets neither
    assert quota.extend_requests == [MIN_EXTENSION_TOKENS, 1] * 6
    assert quota.only_hold().extensions == [1] * 5
    done = finished(events)
    assert done.finish_reason is FinishReason.QUOTA_EXHAUSTED
    assert deltas(events) == ["abcd"] * 7  # 2 within max_tokens + 5 extended
    assert quota.used[USER] <= quota.limit  # never charged past the budget


async def test_a_refused_extension_cuts_the_answer_off_and_charges_what_was_sent() -> None:
    model = ScriptedChatModel(parts=["abcd"] * 6, usage={"input": 999, "output": 999})
    r = rig(model, quota=FakeQuota(refuse_extensions=True))
    turn, events = await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=3)))

    assert kinds(events) == ["Started", "Delta", "Delta", "Delta", "Finished"]
    done = finished(events)
    assert done.finish_reason is FinishReason.QUOTA_EXHAUSTED
    assert done.content == "abcd" * 3
    # the provider's usage never arrived: charge our own count of what was delivered
    assert done.usage == local_usage(turn.messages, ["abcd"] * 3)
    hold = r.quota.only_hold()
    assert hold.state == "settled" and hold.charged == done.usage.total_tokens
    assert model.closed  # the provider stream was closed, not left running
    (_, answer) = r.store.conversations[(USER, turn.conversation_id)].messages
    assert answer.content == "abcd" * 3  # cut-off turns are stored


async def test_an_extension_auth_cannot_answer_fails_the_turn_not_as_exhausted() -> None:
    model = ScriptedChatModel(parts=["abcd"] * 6)
    outage = quota_unavailable(grpc.StatusCode.UNAVAILABLE)
    r = rig(model, quota=FakeQuota(fail_extensions=outage))
    turn, events = await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=3)))

    assert kinds(events) == ["Started", "Delta", "Delta", "Delta", "Failed"]
    error = failed(events).error
    assert isinstance(error, Unavailable) and error is outage
    assert error.reason == "QUOTA_UNAVAILABLE" and error.retry_after_seconds
    hold = r.quota.only_hold()  # the delivered part charged, the rest freed
    assert hold.state == "settled"
    assert hold.charged == local_usage(turn.messages, ["abcd"] * 3).total_tokens
    assert r.store.all_messages() == []
    assert model.closed


class ExtendStub:
    """QuotaService's ExtendReservation failing with one status code."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def ExtendReservation(self, request: Any, **options: Any) -> Any:
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   details="extend failed")


async def extend_failing_with(code: grpc.StatusCode) -> bool:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never dialled
    try:
        client = QuotaClient(channel, ttl_seconds=60)
        cast(Any, client)._stub = ExtendStub(code)
        return await client.extend(Hold("r1", 10), 5)
    finally:
        await channel.close()


async def test_the_quota_client_reads_resource_exhausted_as_no_room() -> None:
    assert await extend_failing_with(grpc.StatusCode.RESOURCE_EXHAUSTED) is False


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED],
                         ids=lambda c: c.name)
async def test_the_quota_client_reads_other_failures_as_unavailable(
        code: grpc.StatusCode) -> None:
    with pytest.raises(Unavailable) as caught:
        await extend_failing_with(code)
    assert caught.value.reason == "QUOTA_UNAVAILABLE"
    assert caught.value.metadata["peer_code"] == code.name
    assert caught.value.retry_after_seconds is not None


# --- failure and cancellation: charged what was delivered, nothing stored ----------

async def test_a_provider_failure_mid_answer_fails_the_turn_and_settles_the_partial() -> None:
    outage = Unavailable("model 'scripted' failed mid-answer", reason="MODEL_UNAVAILABLE")
    r = rig(ScriptedChatModel(parts=["abcd", "efgh"], fail_with=outage))
    turn, events = await run_turn(r, TurnRequest("Fail later"))

    assert kinds(events) == ["Started", "Delta", "Delta", "Failed"]
    assert failed(events).error is outage
    hold = r.quota.only_hold()
    assert hold.state == "settled"
    assert hold.charged == local_usage(turn.messages, ["abcd", "efgh"]).total_tokens
    assert r.store.all_messages() == []


async def test_an_unexpected_failure_before_any_text_releases_the_hold() -> None:
    r = rig(ScriptedChatModel(parts=[], fail_with=RuntimeError("socket closed")))
    token = request_id_var.set("req-42")
    try:
        _, events = await run_turn(r, TurnRequest("Fail now"))
    finally:
        request_id_var.reset(token)

    assert kinds(events) == ["Started", "Failed"]
    error = failed(events).error
    assert isinstance(error, Internal)
    assert "req-42" in error.message and "socket" not in error.message  # no internals
    assert r.quota.only_hold().state == "released"
    assert r.quota.used == {}
    assert r.store.all_messages() == []


async def test_a_cancelled_turn_settles_what_it_delivered_and_stores_nothing() -> None:
    model = ScriptedChatModel(parts=["abcd", "efgh", "never"], block_at=2)
    r = rig(model)
    turn = await r.engine.prepare(USER, TurnRequest("Cancel me"))
    events = open_run(r, turn)
    received = [await anext(events) for _ in range(3)]  # Started, Delta, Delta
    pending = asyncio.ensure_future(anext(events))
    await model.blocked.wait()

    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending

    assert deltas(received) == ["abcd", "efgh"]
    hold = r.quota.only_hold()
    assert hold.state == "settled"
    # what it generated (its consumer, the live turn, logged every delta it took)
    assert hold.charged == local_usage(turn.messages, ["abcd", "efgh"]).total_tokens
    assert turn.charged == local_usage(turn.messages, ["abcd", "efgh"])
    assert r.store.all_messages() == []
    assert model.closed


async def test_a_turn_cancelled_before_any_text_releases_its_hold() -> None:
    model = ScriptedChatModel(parts=["never"], block_at=0)
    r = rig(model)
    turn = await r.engine.prepare(USER, TurnRequest("Cancel me"))
    events = open_run(r, turn)
    assert isinstance(await anext(events), Started)
    task = asyncio.ensure_future(anext(events))
    await model.blocked.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert model.closed
    assert r.quota.only_hold().state == "released"
    assert r.store.all_messages() == []


async def test_a_consumer_that_goes_away_mid_answer_is_charged_for_what_it_got() -> None:
    r = rig(ScriptedChatModel(parts=["abcd", "efgh", "ijkl"]))
    turn = await r.engine.prepare(USER, TurnRequest("Leave early"))
    events = open_run(r, turn)
    assert isinstance(await anext(events), Started)
    assert await anext(events) == Delta("abcd")

    await events.aclose()

    hold = r.quota.only_hold()
    assert hold.state == "settled"
    # what was generated: the delta it took, and any text the model had sent that it
    # had not taken yet (the turn's `tail`, which its consumer logs)
    assert turn.generation.text == "abcd" + turn.tail
    assert hold.charged == local_usage(turn.messages, [turn.generation.text]).total_tokens
    assert r.store.all_messages() == []


async def test_a_consumer_that_goes_away_after_started_frees_the_hold() -> None:
    r = rig(ScriptedChatModel(parts=["abcd"]))
    turn = await r.engine.prepare(USER, TurnRequest("Leave at once"))
    events = open_run(r, turn)
    assert isinstance(await anext(events), Started)

    await events.aclose()

    assert r.quota.only_hold().state == "released"


async def test_a_consumer_that_goes_away_at_the_sources_is_charged() -> None:
    r = rig(ScriptedChatModel(parts=["abcd"]))
    turn = await r.engine.prepare(USER, TurnRequest("Q?", options=TurnOptions(use_rag=True)))
    events = open_run(r, turn)
    received = [await anext(events) for _ in range(3)]
    assert isinstance(received[-1], SourcesFound)

    await events.aclose()

    assert r.quota.only_hold().state == "settled"
    assert r.store.all_messages() == []


# --- storing a delivered turn: retried briefly, never turned into a failure ---------

async def test_a_store_that_fails_twice_then_works_stores_the_turn_once() -> None:
    store = FakeConversationStore(ConnectionError("redis went away"), fail_times=2)
    r = rig(ScriptedChatModel(parts=["abcd"]), store=store)
    turn, events = await run_turn(r, TurnRequest("Q?"))

    done = finished(events)
    assert done.stored
    assert done.message_name.startswith(f"conversations/{turn.conversation_id}/messages/")
    assert store.append_calls == 3
    (_, answer) = store.conversations[(USER, turn.conversation_id)].messages
    assert done.message_name.endswith(answer.id) and answer.content == "abcd"
    hold = r.quota.only_hold()
    assert hold.state == "settled" and hold.charged == done.usage.total_tokens


async def test_a_store_that_always_fails_finishes_the_delivered_turn_unstored() -> None:
    store = FakeConversationStore(fail_append=ConnectionError("redis went away"))
    r = rig(ScriptedChatModel(parts=["abcd", "efgh"]), store=store)
    _, events = await run_turn(r, TurnRequest("Q?"))

    assert kinds(events) == ["Started", "Delta", "Delta", "Finished"]
    done = finished(events)
    assert not done.stored and done.message_name == ""
    assert done.content == "abcdefgh" and done.finish_reason is FinishReason.STOP
    assert store.append_calls == 3  # bounded tries
    assert store.all_messages() == []
    hold = r.quota.only_hold()  # charged exactly once, no release after it
    assert hold.state == "settled" and hold.charged == done.usage.total_tokens
    assert r.quota.used[USER] == done.usage.total_tokens


class HangingStore(FakeConversationStore):
    """A store whose writes never answer (a Redis that stopped responding)."""

    async def append_turn(self, user: str, conversation: str, *, is_new: bool,
                          question: MessageRecord, answer: MessageRecord) -> bool:
        self.append_calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_store_that_never_answers_is_given_up_within_the_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llmmesh.chat")
    store = HangingStore()
    model = ScriptedChatModel(parts=["abcd"])
    engine = ChatEngine(FakeRegistry((model_spec(), model)), store, FakeQuota(), FakeSearch(),
                        history_turns=3, max_message_chars=1000,
                        store_retry_delays=(0.0, 0.0), store_budget_seconds=0.01)
    turn = await engine.prepare(USER, TurnRequest("Q?"))
    events = await collect(engine.run(turn))

    done = finished(events)
    assert not done.stored and done.content == "abcd"
    assert store.append_calls == 1
    # Storage too slow is an outage, not a bug: one warning, no traceback, no ERROR.
    (given_up,) = [r for r in caplog.records if "finishing it unstored" in r.message]
    assert given_up.levelno == logging.WARNING and given_up.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_storing_the_same_turn_again_does_not_duplicate_it(redis: Redis) -> None:
    """A retry after a write whose reply was lost finds the turn already there."""
    user = new_user()
    store = ConversationStore(redis, retention_seconds=3600)
    question = MessageRecord("q" * 32, "user", "Q?", 1)
    answer = MessageRecord("r" * 32, "assistant", "A.", 2, model="scripted", usage=Usage(3, 1))
    for _ in range(2):
        assert await store.append_turn(user, CONVERSATION, is_new=True, question=question,
                                       answer=answer)
    stored = await store.get(user, CONVERSATION)
    assert stored is not None and stored.message_count == 2
    page = await store.messages(user, CONVERSATION, 0, 10)
    assert page is not None and [m.id for m in page[0]] == [question.id, answer.id]


async def test_a_conversation_deleted_while_answering_finishes_without_a_message_name(
        ) -> None:
    store = FakeConversationStore()
    store.add(USER, CONVERSATION, "hi", "hello")
    r = rig(ScriptedChatModel(parts=["abcd"]), store=store)
    turn = await r.engine.prepare(USER, TurnRequest("Q?", f"conversations/{CONVERSATION}"))
    del store.conversations[(USER, CONVERSATION)]

    events = await collect(r.engine.run(turn))

    assert finished(events).message_name == ""
    assert store.conversations == {}  # not recreated
    assert r.quota.only_hold().state == "settled"


# --- conversations and the history window -------------------------------------------

async def test_a_continued_conversation_sends_only_the_last_turns_as_history() -> None:
    store = FakeConversationStore()
    past = [f"{role} {n}" for n in range(5) for role in ("question", "answer")]
    store.add(USER, CONVERSATION, *past)
    r = rig(ScriptedChatModel(parts=["ok"]), store=store, history_turns=2)
    turn, events = await run_turn(r, TurnRequest("next?", f"conversations/{CONVERSATION}"))

    assert store.history_calls == [(USER, CONVERSATION, 2)]
    ((messages, _),) = r.model.calls
    assert [type(m) for m in messages] == [SystemMessage, HumanMessage, AIMessage,
                                           HumanMessage, AIMessage, HumanMessage]
    assert [m.content for m in messages[1:]] == [
        "question 3", "answer 3", "question 4", "answer 4", "next?"]
    assert not turn.is_new and turn.conversation_id == CONVERSATION
    assert finished(events).message_name.startswith(f"conversations/{CONVERSATION}/messages/")
    assert len(store.conversations[(USER, CONVERSATION)].messages) == 12


async def test_a_zero_history_window_sends_no_history() -> None:
    store = FakeConversationStore()
    store.add(USER, CONVERSATION, "old question", "old answer")
    r = rig(ScriptedChatModel(parts=["ok"]), store=store, history_turns=0)
    turn = await r.engine.prepare(USER, TurnRequest("new?", f"conversations/{CONVERSATION}"))
    assert [m.content for m in turn.messages[1:]] == ["new?"]


@pytest.mark.parametrize("owner", [None, OTHER], ids=["missing", "someone-elses"])
async def test_an_unknown_or_foreign_conversation_is_not_found_before_any_hold(
        owner: str | None) -> None:
    store = FakeConversationStore()
    if owner:
        store.add(owner, CONVERSATION, "their question", "their answer")
    r = rig(ScriptedChatModel(parts=["never"]), store=store)
    with pytest.raises(NotFound) as caught:
        await r.engine.prepare(USER, TurnRequest("Q?", f"conversations/{CONVERSATION}"))
    assert caught.value.resource_name == f"conversations/{CONVERSATION}"
    assert r.quota.holds == {}
    assert r.model.calls == []


@pytest.mark.parametrize(("request_", "field"), [
    (TurnRequest("   "), "message"),
    (TurnRequest("x" * 1001), "message"),
    (TurnRequest("Q?", options=TurnOptions(model="nope")), "options.model"),
    (TurnRequest("Q?", options=TurnOptions(max_tokens=513)), "options.max_tokens"),
    (TurnRequest("Q?", options=TurnOptions(collection="notes")), "options.use_rag"),
    (TurnRequest("Q?", "conversations/nope"), "conversation"),
], ids=["blank", "too-long", "model", "max-tokens", "rag-scope", "conversation"])
async def test_invalid_turns_are_refused_before_search_or_quota(
        request_: TurnRequest, field: str) -> None:
    r = rig(ScriptedChatModel(parts=["never"]))
    with pytest.raises(InvalidArgument) as caught:
        await r.engine.prepare(USER, request_)
    assert field in [v.field for v in caught.value.violations]
    assert r.search.calls == [] and r.quota.holds == {}


async def test_history_window_over_the_real_conversation_store(redis: Redis) -> None:
    """Turns stored by the engine itself come back as the next turns' history."""
    user = new_user()
    store = ConversationStore(redis, retention_seconds=3600)
    model = ScriptedChatModel(parts=["answer"])
    registry = FakeRegistry((model_spec(), model))
    engine = ChatEngine(registry, store, FakeQuota(), FakeSearch(), history_turns=2,
                        max_message_chars=1000)
    conversation = ""
    for n in range(4):
        turn = await engine.prepare(user, TurnRequest(f"question {n}", conversation))
        finished(await collect(engine.run(turn)))
        conversation = f"conversations/{turn.conversation_id}"

    last_prompt: list[Any] = [m.content for m in model.calls[-1][0][1:]]
    assert last_prompt == ["question 1", "answer", "question 2", "answer", "question 3"]
    stored = await store.get(user, conversation.removeprefix("conversations/"))
    assert stored is not None and stored.message_count == 8
    assert await store.history(OTHER, conversation.removeprefix("conversations/"), 2) is None


# --- retried settlement -----------------------------------------------------------------

def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details="settle failed")


class SettleStub:
    """Settle and Release failing with `failures` (in turn), then answering."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[Any] = []

    async def _answer(self, request: Any, **options: Any) -> Any:
        self.calls.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return None

    SettleReservation = _answer
    ReleaseReservation = _answer


async def settle_with(stub: SettleStub, operation: str, *, expire_in: float = 60.0) -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never dialled
    try:
        client = QuotaClient(channel, ttl_seconds=60, backoff=lambda attempt: 0.0)
        cast(Any, client)._stub = stub
        hold = Hold("r1", 10, expire_time=time.time() + expire_in)
        task = client.settle(hold, 7) if operation == "settle" else client.release(hold)
        await client.drain()
        assert task.done() and task.exception() is None
    finally:
        await channel.close()


@pytest.mark.parametrize("operation", ["settle", "release"])
async def test_a_settlement_is_retried_through_transient_failures_until_it_lands(
        operation: str) -> None:
    stub = SettleStub(rpc_error(grpc.StatusCode.UNAVAILABLE),
                      rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
                      ConnectionResetError("reset"), rpc_error(grpc.StatusCode.UNAVAILABLE))
    await settle_with(stub, operation)
    assert len(stub.calls) == 5  # four failures, then it landed
    assert all(call == stub.calls[0] for call in stub.calls)  # the same request each time


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.PERMISSION_DENIED],
                         ids=lambda c: c.name)
async def test_a_definitive_answer_is_never_retried(code: grpc.StatusCode) -> None:
    stub = SettleStub(rpc_error(code))
    await settle_with(stub, "settle")
    assert len(stub.calls) == 1


async def test_retries_stop_once_the_late_settle_window_has_passed() -> None:
    stub = SettleStub(*(rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(5)))
    await settle_with(stub, "settle", expire_in=-(LATE_SETTLE_SECONDS + 1))
    assert len(stub.calls) == 1  # long past its expiry: the checkpoint charge stands


async def test_a_settlement_is_still_retried_just_after_the_hold_expired() -> None:
    stub = SettleStub(*(rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(5)))
    await settle_with(stub, "settle", expire_in=-1.0)
    assert len(stub.calls) == 6, "auth corrects an expired hold's charge with a late settle"


async def test_the_hold_carries_auths_expiry_and_extensions_send_the_checkpoint() -> None:
    requests: list[Any] = []
    expire = 1_900_000_000

    class Stub:
        async def ReserveTokens(self, request: Any, **options: Any) -> Any:
            return quota_pb2.ReserveTokensResponse(reservation=quota_pb2.Reservation(
                reservation_id="r1", tokens=request.tokens,
                expire_time=timestamp_pb2.Timestamp(seconds=expire)))

        async def ExtendReservation(self, request: Any, **options: Any) -> Any:
            requests.append(request)
            return quota_pb2.ExtendReservationResponse(reservation=quota_pb2.Reservation(
                reservation_id="r1", tokens=30,
                expire_time=timestamp_pb2.Timestamp(seconds=expire + 5, nanos=500_000_000)))

    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never dialled
    try:
        client = QuotaClient(channel, ttl_seconds=60)
        cast(Any, client)._stub = Stub()
        hold = await client.reserve(USER, 10)
        assert hold.expire_time == expire
        assert await client.extend(hold, 20, 12)
        assert (hold.tokens, hold.expire_time) == (30, expire + 5.5)
        assert (requests[0].additional_tokens, requests[0].delivered_tokens) == (20, 12)
    finally:
        await channel.close()


# --- coalescing, step checkpoints, the unary answer ----------------------------------

async def test_text_that_arrives_at_once_goes_out_as_one_delta() -> None:
    parts = ["Hello", " there", ", world."]
    r = rig(ScriptedChatModel(parts=parts, burst=True))
    turn, events = await run_turn(r, TurnRequest("Say hello"))

    assert deltas(events) == ["Hello there, world."]
    assert finished(events).usage == local_usage(turn.messages, parts)


async def test_a_consumer_slower_than_the_model_gets_the_backlog_in_one_delta() -> None:
    model = ScriptedChatModel(parts=["a", "b", "c", "d", "e"])
    r = rig(model)
    turn = await r.engine.prepare(USER, TurnRequest("Slow reader"))
    events = open_run(r, turn)
    assert isinstance(await anext(events), Started)
    assert await anext(events) == Delta("a")  # the first one is never held back
    for _ in range(20):  # the consumer is busy; the model writes on meanwhile
        await asyncio.sleep(0)
    assert model.closed

    rest = await collect(events)

    assert deltas(rest) == ["bcde"]
    done = finished(rest)
    assert done.content == "abcde"
    assert r.quota.only_hold().charged == done.usage.total_tokens


async def test_every_hold_step_of_delivered_output_is_checkpointed() -> None:
    parts = ["abcd" * 10] * 20  # 10 local tokens each; max_tokens 256: a 64-token step
    r = rig(ScriptedChatModel(parts=parts))
    turn, events = await run_turn(r, TurnRequest("Long", options=TurnOptions(max_tokens=256)))

    hold = r.quota.only_hold()
    assert turn.step == 64
    prompt = turn.prompt_tokens
    delivered = [prompt + 10 * n for n in range(1, 21)]
    expected, last = [], 0
    for total in delivered:  # checkpointed whenever a step passed since the last one
        if total - last >= 64:
            expected.append(total)
            last = total
    assert hold.step_checkpoints == expected and len(expected) >= 3
    # at no point was more than a step delivered beyond the last checkpoint
    marks = [0, *expected]
    assert all(total - max(m for m in marks if m <= total) < 64 for total in delivered)
    assert hold.charged == finished(events).usage.total_tokens >= expected[-1]


async def test_a_short_answer_sends_no_checkpoint() -> None:
    r = rig(ScriptedChatModel(parts=["ok"]))
    await run_turn(r, TurnRequest("Hi"))
    assert r.quota.only_hold().step_checkpoints == []


@pytest.mark.parametrize("usage", [None, {"input": 40, "output": 7}],
                         ids=["local-count", "provider-usage"])
async def test_the_unary_answer_matches_the_streamed_one(usage: dict[str, int] | None) -> None:
    parts = ["The answer", " is", " forty-two."]
    streamed = rig(ScriptedChatModel(parts=parts, usage=usage))
    unary = rig(ScriptedChatModel(parts=parts, usage=usage))
    request = TurnRequest("What is the answer?", options=TurnOptions(use_rag=True))

    _, events = await run_turn(streamed, request)
    unary_turn = await unary.engine.prepare(USER, request, streamed=False)
    answer = await unary.engine.answer(unary_turn)

    done = finished(events)
    assert (answer.content, answer.usage, answer.finish_reason, answer.sources) == (
        done.content, done.usage, done.finish_reason, done.sources)
    assert unary.quota.only_hold().charged == streamed.quota.only_hold().charged
    stored = [(m.role, m.content, m.usage, m.sources) for m in unary.store.all_messages()]
    assert stored == [(m.role, m.content, m.usage, m.sources)
                      for m in streamed.store.all_messages()]
    assert answer.stored and len(unary.model.calls) == 1


async def test_a_failed_unary_answer_frees_the_hold_and_stores_nothing() -> None:
    model = ScriptedChatModel(parts=["never"], fail_with=RuntimeError("provider broke"))
    r = rig(model)
    turn = await r.engine.prepare(USER, TurnRequest("Q?"), streamed=False)
    with pytest.raises(Internal):
        await r.engine.answer(turn)
    assert r.quota.only_hold().state == "released"
    assert r.store.all_messages() == []


async def test_a_cancelled_unary_answer_closes_the_model_call_and_frees_the_hold() -> None:
    model = ScriptedChatModel(parts=["never"], block_at=0)
    r = rig(model)
    turn = await r.engine.prepare(USER, TurnRequest("Q?"), streamed=False)
    task = asyncio.ensure_future(r.engine.answer(turn))
    await model.blocked.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert model.closed
    assert r.quota.only_hold().state == "released"
    assert r.store.all_messages() == []


async def test_a_cut_turn_pays_its_prompt_as_the_model_counts_prompts() -> None:
    """The model reports usage only at the end of a stream: a turn cut before that is
    charged by our count, scaled by what the model reported for finished turns."""
    probe = rig(ScriptedChatModel(parts=["x"]))
    local, _ = await run_turn(probe, TurnRequest("How are you today?"))
    ours = local.prompt_tokens
    r = rig(ScriptedChatModel(parts=["fine"], usage={"input": 2 * ours, "output": 1}))
    await run_turn(r, TurnRequest("How are you today?"))  # the model counts twice ours

    cut_model = ScriptedChatModel(parts=["abcd", "efgh", "never"], block_at=2)
    r.engine.registry = FakeRegistry((model_spec(), cut_model))  # the same model id
    cut = await r.engine.prepare(USER, TurnRequest("How are you today?"))
    events = open_run(r, cut)
    assert isinstance(await anext(events), Started)
    assert await anext(events) == Delta("abcd")
    assert await anext(events) == Delta("efgh")
    await events.aclose()

    assert cut.prompt_tokens == ours
    charged = r.quota.holds[cut.hold.reservation_id].charged
    assert charged == 2 * ours + count_tokens("abcdefgh")  # every delta it generated
