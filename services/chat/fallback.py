"""Provider fallback: retry a failing model before its first token, then try the next.

A model's chain is the model itself and then its configured fallbacks, in order. Each
model is tried up to its retry policy's `max_attempts`; a retryable failure (rate
limited, 5xx, unreachable, no first token in time) waits out an exponential backoff —
or the provider's `Retry-After` when it says so — and tries again. When a model's tries
are used up (or its `Retry-After` is longer than the policy's longest backoff: we do
not keep a user waiting that long), the next model in the chain answers. A failure
that is not retryable (the provider refused the request, 4xx) ends the chain at once.

The switch happens only before the first token: once a model has produced text, its
stream is the answer, and a failure after that ends the turn (no silent switch,
which would splice two models' answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk

from services.chat import provider_gate
from services.chat.config import RetryPolicy
from services.chat.registry import RegisteredModel
from services.runtime.errors import DeadlineExceeded, LlmmeshError
from services.runtime.provider_errors import provider_error, retry_after_seconds

log = logging.getLogger("llmmesh.chat")

# The reasons (provider_errors) a try may fail with and still be tried again.
RETRYABLE_REASONS = frozenset({"MODEL_RATE_LIMITED", "MODEL_UNAVAILABLE", "MODEL_TIMEOUT"})


class FirstTokenTimeout(DeadlineExceeded):
    """The model produced no text within its first-token timeout."""

    def __init__(self, model: str, seconds: float) -> None:
        super().__init__(f"model {model!r} sent no token within {seconds:g} s",
                         reason="MODEL_TIMEOUT", metadata={"model": model})


def retryable(error: BaseException, model: str) -> bool:
    """Whether a failure before the first token may be retried (or fall back)."""
    mapped = provider_error(error, model)
    return mapped is not None and mapped.reason in RETRYABLE_REASONS


def backoff(policy: RetryPolicy, attempt: int, error: BaseException) -> float:
    """Seconds to wait before try `attempt + 1` (attempt counts from 0): the provider's
    Retry-After when it gave one, else the policy's exponential backoff."""
    told = retry_after_seconds(error)
    if told is not None:
        return told
    return min(policy.initial_backoff_seconds * policy.backoff_multiplier ** attempt,
               policy.max_backoff_seconds)


def call_options(model: RegisteredModel, options: dict[str, Any]) -> dict[str, Any]:
    """`options` for `model`: max_tokens within what it allows (a fallback may allow
    fewer than the model the turn asked for)."""
    limit = model.spec.max_output_tokens
    if options.get("max_tokens", 0) > limit:
        return {**options, "max_tokens": limit}
    return options


class FallbackChain:
    """Answers a turn with the first model of `models` that can."""

    def __init__(self, models: Sequence[RegisteredModel]) -> None:
        if not models:
            raise ValueError("a chain needs a model")
        self.models = tuple(models)
        # The model being tried: once one started answering, the one that answers;
        # when all failed, the last one tried.
        self.answering = self.models[0]

    async def stream(self, messages: list[BaseMessage], options: dict[str, Any]
                     ) -> AsyncGenerator[tuple[RegisteredModel, BaseMessageChunk], None]:
        """The answering model's chunks, each with that model. Raises the last model's
        error when none could start, and a model's error after its first token."""
        last: BaseException | None = None
        for model in self.models:
            policy = model.spec.retry
            for attempt in range(policy.max_attempts):
                self.answering = model
                if not model.gated:
                    await provider_gate.wait_for_gate()
                stream = _chunks(model, messages, options)
                async with aclosing(stream) as chunks:
                    try:
                        started = await self._first_text(model, chunks)
                    except Exception as error:  # retried, or raised below
                        if not retryable(error, model.spec.id):
                            raise
                        last = error
                    else:
                        for chunk in started:
                            yield model, chunk
                        async for chunk in chunks:
                            yield model, chunk
                        return
                if not await self._wait_to_retry(model, policy, attempt, last):
                    break
        assert last is not None
        raise last

    async def invoke(self, messages: list[BaseMessage], options: dict[str, Any]
                     ) -> tuple[RegisteredModel, BaseMessage]:
        """One whole answer and the model that gave it (all or nothing: any retryable
        failure may retry or fall back)."""
        last: BaseException | None = None
        for model in self.models:
            policy = model.spec.retry
            for attempt in range(policy.max_attempts):
                self.answering = model
                if not model.gated:
                    await provider_gate.wait_for_gate()
                try:
                    message = await model.model.ainvoke(messages,
                                                        **call_options(model, options))
                except Exception as error:  # retried, or raised below
                    if not retryable(error, model.spec.id):
                        raise
                    last = error
                else:
                    return model, message
                if not await self._wait_to_retry(model, policy, attempt, last):
                    break
        assert last is not None
        raise last

    @staticmethod
    async def _first_text(model: RegisteredModel,
                          chunks: AsyncIterator[BaseMessageChunk]) -> list[BaseMessageChunk]:
        """The chunks up to and including the first with text (all of them when the
        answer has none), within the model's first-token timeout."""
        seconds = model.spec.first_token_timeout_seconds
        started: list[BaseMessageChunk] = []
        timeout = (asyncio.timeout(seconds) if seconds is not None
                   else contextlib.nullcontext())
        try:
            async with timeout:
                async for chunk in chunks:
                    started.append(chunk)
                    if isinstance(chunk.content, str) and chunk.content:
                        break
        except TimeoutError:
            assert seconds is not None
            raise FirstTokenTimeout(model.spec.id, seconds) from None
        return started

    def _next_of(self, model: RegisteredModel) -> RegisteredModel | None:
        index = self.models.index(model)
        return self.models[index + 1] if index + 1 < len(self.models) else None

    async def _wait_to_retry(self, model: RegisteredModel, policy: RetryPolicy, attempt: int,
                             error: BaseException | None) -> bool:
        """Wait before trying `model` again; False when it gets no more tries (the
        chain moves on)."""
        assert error is not None
        if attempt + 1 >= policy.max_attempts:
            self._log_switch(model, error)
            return False
        delay = backoff(policy, attempt, error)
        if delay > policy.max_backoff_seconds:  # told to come back later than we wait
            self._log_switch(model, error)
            return False
        log.warning("model failed before its first token; retrying", extra={
            "model": model.spec.id, "attempt": attempt + 1, "delay_seconds": delay,
            "error": _reason(error, model)})
        await asyncio.sleep(delay)
        return True

    def _log_switch(self, model: RegisteredModel, error: BaseException) -> None:
        following = self._next_of(model)
        if following is not None:
            log.warning("model failed before its first token; falling back", extra={
                "model": model.spec.id, "fallback": following.spec.id,
                "error": _reason(error, model)})


async def _chunks(model: RegisteredModel, messages: list[BaseMessage],
                  options: dict[str, Any]) -> AsyncGenerator[BaseMessageChunk, None]:
    stream = model.model.astream(messages, **call_options(model, options))
    # BaseChatModel.astream is an async generator (annotated AsyncIterator): closed at
    # once when the turn is cancelled, so the provider's request stops too.
    assert isinstance(stream, AsyncGenerator)
    async with aclosing(stream) as chunks:
        async for chunk in chunks:
            yield chunk


def _reason(error: BaseException, model: RegisteredModel) -> str:
    mapped = provider_error(error, model.spec.id)
    return mapped.reason if isinstance(mapped, LlmmeshError) else type(error).__name__
