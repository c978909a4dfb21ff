"""In-memory fakes at ChatEngine's seams: the model registry, the conversation store,
the quota client, document search, and a scripted streaming chat model."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from services.chat.config import ModelSpec
from services.chat.conversations import ConversationRecord, ConversationStore, MessageRecord
from services.chat.events import Source
from services.chat.prompts import HistoryMessage
from services.chat.quota import Hold, QuotaClient
from services.chat.registry import ModelRegistry, RegisteredModel
from services.chat.retrieval import DocumentSearch
from services.runtime.errors import QuotaViolation, ResourceExhausted


class ScriptedChatModel(BaseChatModel):
    """Streams `parts` one chunk each, then a final chunk with `finish_reason` and
    `usage` (when set). `fail_with` is raised after the parts; with `block_at`, the
    stream stops before that part, sets `blocked` and waits for `unblock`. Parts
    arrive one at a time (the event loop runs between them, as between network
    reads) unless `burst`: then all at once, as from one read. A non-streamed call
    (`ainvoke`) answers the parts joined, with the same usage and finish reason."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    parts: list[str]
    usage: dict[str, int] | None = None
    finish_reason: str | None = "stop"
    fail_with: BaseException | None = None
    block_at: int | None = None
    blocked: asyncio.Event = Field(default_factory=asyncio.Event)
    unblock: asyncio.Event = Field(default_factory=asyncio.Event)
    calls: list[tuple[list[BaseMessage], dict[str, Any]]] = Field(default_factory=list)
    closed: bool = False
    burst: bool = False

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError("the engine calls models asynchronously")

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        self.calls.append((list(messages), dict(kwargs)))
        try:
            if self.block_at is not None:
                self.blocked.set()
                await self.unblock.wait()
            if self.fail_with is not None:
                raise self.fail_with
            metadata = {"finish_reason": self.finish_reason} if self.finish_reason else {}
            message = AIMessage(content="".join(self.parts), usage_metadata=self._usage(),
                                response_metadata=metadata)
            return ChatResult(generations=[ChatGeneration(message=message)])
        finally:
            self.closed = True

    def _usage(self) -> UsageMetadata | None:
        if not self.usage:
            return None
        return UsageMetadata(input_tokens=self.usage["input"],
                             output_tokens=self.usage["output"],
                             total_tokens=self.usage["input"] + self.usage["output"])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        self.calls.append((list(messages), dict(kwargs)))
        try:
            for index, part in enumerate(self.parts):
                if index == self.block_at:
                    self.blocked.set()
                    await self.unblock.wait()
                yield ChatGenerationChunk(message=AIMessageChunk(content=part))
                if not self.burst:
                    await asyncio.sleep(0)
            if self.fail_with is not None:
                raise self.fail_with
            metadata = {"finish_reason": self.finish_reason} if self.finish_reason else {}
            yield ChatGenerationChunk(message=AIMessageChunk(
                content="", usage_metadata=self._usage(), response_metadata=metadata))
        finally:
            self.closed = True


def model_spec(model_id: str = "scripted", *, max_output_tokens: int = 512,
               default_max_tokens: int = 64) -> ModelSpec:
    return ModelSpec(id=model_id, provider="openai", max_output_tokens=max_output_tokens,
                     default_max_tokens=default_max_tokens)


class FakeRegistry(ModelRegistry):
    """Registered models without building any provider client."""

    def __init__(self, *models: tuple[ModelSpec, BaseChatModel]) -> None:
        self._registered = {spec.id: RegisteredModel(spec, model, index == 0)
                            for index, (spec, model) in enumerate(models)}
        self.default_id = models[0][0].id

    def get(self, model_id: str) -> RegisteredModel | None:
        return self._registered.get(model_id or self.default_id)

    def all(self) -> list[RegisteredModel]:
        return list(self._registered.values())

    def ids(self) -> list[str]:
        return list(self._registered)


@dataclass
class StoredConversation:
    messages: list[MessageRecord] = field(default_factory=list)


class FakeConversationStore(ConversationStore):
    """Conversations in a dict, with the same history window as the Redis store.

    `fail_append` is raised by the first `fail_times` appends (every one when None);
    `append_calls` counts the tries."""

    def __init__(self, fail_append: BaseException | None = None, *,
                 fail_times: int | None = None) -> None:
        self.conversations: dict[tuple[str, str], StoredConversation] = {}
        self.history_calls: list[tuple[str, str, int]] = []
        self.fail_append = fail_append
        self.fail_times = fail_times
        self.append_calls = 0

    def add(self, user: str, conversation: str, *contents: str) -> None:
        """Seed a conversation with alternating user/assistant messages."""
        stored = self.conversations.setdefault((user, conversation), StoredConversation())
        for index, content in enumerate(contents):
            role = "user" if index % 2 == 0 else "assistant"
            stored.messages.append(MessageRecord(f"m{index}", role, content, index))

    async def get(self, user: str, conversation: str) -> ConversationRecord | None:
        stored = self.conversations.get((user, conversation))
        if stored is None:
            return None
        return ConversationRecord(conversation, "", len(stored.messages), 0, 0)

    async def history(self, user: str, conversation: str,
                      turns: int) -> list[HistoryMessage] | None:
        self.history_calls.append((user, conversation, turns))
        stored = self.conversations.get((user, conversation))
        if stored is None:
            return None
        recent = stored.messages[-2 * turns:] if turns else []
        return [HistoryMessage(m.role, m.content) for m in recent]

    async def append_turn(self, user: str, conversation: str, *, is_new: bool,
                          question: MessageRecord, answer: MessageRecord) -> bool:
        self.append_calls += 1
        failing = self.fail_times is None or self.append_calls <= self.fail_times
        if self.fail_append is not None and failing:
            raise self.fail_append
        if not is_new and (user, conversation) not in self.conversations:
            return False
        stored = self.conversations.setdefault((user, conversation), StoredConversation())
        stored.messages.extend([question, answer])
        return True

    def all_messages(self) -> list[MessageRecord]:
        return [m for stored in self.conversations.values() for m in stored.messages]


@dataclass
class FakeHold:
    """What the fake quota peer knows about one reservation."""

    user_id: str
    held: int
    state: str = "held"  # held | settled | released
    charged: int = 0
    extensions: list[int] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)  # delivered, with each extend
    step_checkpoints: list[int] = field(default_factory=list)  # delivered, every hold step


class FakeQuota(QuotaClient):
    """A quota peer with a monthly budget per user, arithmetic like auth's ledger.

    `extend` says False when there is no room (or `refuse_extensions`) and raises
    `fail_extensions` when set, like the real client when auth cannot answer.
    `settle` and `release` return their detached task like the real client; the
    bookkeeping happens when the engine calls them, so a test reads it right away.
    """

    def __init__(self, limit: int = 1_000_000, *, refuse_extensions: bool = False,
                 fail_extensions: BaseException | None = None) -> None:
        self.limit = limit
        self.used: dict[str, int] = {}
        self.holds: dict[str, FakeHold] = {}
        self.refuse_extensions = refuse_extensions
        self.fail_extensions = fail_extensions  # raised by extend: auth not answering
        self.extend_requests: list[int] = []
        self._ids = itertools.count(1)
        self._detached: set[asyncio.Task[None]] = set()

    def room(self, user_id: str) -> int:
        live = sum(h.held for h in self.holds.values()
                   if h.user_id == user_id and h.state == "held")
        return self.limit - self.used.get(user_id, 0) - live

    async def reserve(self, user_id: str, tokens: int, into: Hold | None = None, *,
                      model: str = "") -> Hold:
        if tokens > self.room(user_id):
            raise ResourceExhausted("token quota exhausted", reason="TOKEN_QUOTA_EXHAUSTED",
                                    violations=[QuotaViolation(f"users/{user_id}", "full")])
        reservation_id = f"r{next(self._ids)}"
        self.holds[reservation_id] = FakeHold(user_id, tokens)
        hold = into or Hold("", 0)
        hold.reservation_id, hold.tokens = reservation_id, tokens
        return hold

    async def extend(self, hold: Hold, tokens: int, delivered_tokens: int = 0) -> bool:
        self.extend_requests.append(tokens)
        state = self.holds[hold.reservation_id]
        assert state.state == "held", "extending a closed hold"
        state.checkpoints.append(delivered_tokens)
        if self.fail_extensions is not None:
            raise self.fail_extensions
        if self.refuse_extensions or tokens > self.room(state.user_id):
            return False
        state.held += tokens
        state.extensions.append(tokens)
        hold.tokens = state.held
        return True

    def checkpoint(self, hold: Hold, delivered_tokens: int) -> asyncio.Task[None]:
        state = self.holds[hold.reservation_id]
        if state.state == "held":  # auth refuses one that arrives after the settlement
            state.step_checkpoints.append(delivered_tokens)
        return self._done()

    def settle(self, hold: Hold, used_tokens: int) -> asyncio.Task[None]:
        state = self.holds[hold.reservation_id]
        assert state.state == "held", f"settling a {state.state} hold"
        state.state, state.charged = "settled", used_tokens
        self.used[state.user_id] = self.used.get(state.user_id, 0) + used_tokens
        return self._done()

    def release(self, hold: Hold) -> asyncio.Task[None]:
        state = self.holds[hold.reservation_id]
        assert state.state == "held", f"releasing a {state.state} hold"
        state.state = "released"
        return self._done()

    async def drain(self) -> None:
        await asyncio.gather(*self._detached)

    def only_hold(self) -> FakeHold:
        (hold,) = self.holds.values()
        return hold

    def _done(self) -> asyncio.Task[None]:
        async def nothing() -> None:
            return None

        task = asyncio.get_running_loop().create_task(nothing())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task


class FakeSearch(DocumentSearch):
    """Fixed sources for every question; records what it was asked."""

    def __init__(self, sources: Sequence[Source] = (),
                 fail_with: BaseException | None = None) -> None:
        self.sources = list(sources)
        self.fail_with = fail_with
        self.calls: list[dict[str, Any]] = []

    async def search(self, question: str, *, k: int, collection: str,
                     documents: Sequence[str]) -> list[Source]:
        self.calls.append({"question": question, "k": k, "collection": collection,
                           "documents": list(documents)})
        if self.fail_with is not None:
            raise self.fail_with
        return self.sources[:k]
