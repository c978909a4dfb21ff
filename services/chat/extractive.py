"""The built-in offline model: answers by quoting the retrieved sources.

It is a LangChain chat model like any other (the chains cannot tell): it reads
the question and the numbered sources from its prompt, ranks the sources'
sentences by cosine similarity to the question with the embedding service, and
quotes the best ones with their citations. It says plainly that it quotes rather
than generates, and says so honestly when it has no sources or none that fits.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from services.chat.prompts import Passage, last_question, parse_sources
from services.chat.tokens import count_prompt_tokens, count_tokens

PREAMBLE = "Extractive answer (quoted from your documents, not generated):"
NO_SOURCES_ANSWER = (
    "I am an extractive model: I can only quote passages from your documents, and no "
    "passages were retrieved for this question. Ask again with retrieval (use_rag) "
    "over documents you have uploaded, or choose a generative model.")
NO_MATCH_ANSWER = (
    "I am an extractive model and none of the retrieved passages seems to answer this "
    "question, so I will not guess. The closest passage was:")
MIN_RELEVANCE = 0.25  # cosine below which a sentence is not taken as an answer
MAX_QUOTES = 3
MAX_SENTENCES = 128
MAX_SENTENCE_CHARS = 600
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_PIECE = re.compile(r"\S+\s*|\s+")


class Embedder(Protocol):
    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class ExtractiveChatModel(BaseChatModel):
    """Quotes the sentences of its sources that best match the question."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Any  # an Embedder
    model_name: str = "extractive"
    max_tokens: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llmmesh-extractive"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        """Synchronous use, for an embedder that works from a fresh event loop."""
        return asyncio.run(self._agenerate(messages, stop, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        text, finish, usage = await self._answer(messages, kwargs.get("max_tokens"))
        message = AIMessage(content=text, usage_metadata=usage,
                            response_metadata={"finish_reason": finish,
                                               "model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        result = self._generate(messages, stop, **kwargs)
        message = result.generations[0].message
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=message.content, response_metadata=message.response_metadata,
            usage_metadata=getattr(message, "usage_metadata", None)))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        text, finish, usage = await self._answer(messages, kwargs.get("max_tokens"))
        for piece in _PIECE.findall(text):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage,
            response_metadata={"finish_reason": finish, "model_name": self.model_name}))

    async def _answer(self, messages: Sequence[BaseMessage],
                      max_tokens: int | None) -> tuple[str, str, UsageMetadata]:
        question = last_question(messages)
        passages = parse_sources(messages)
        text = await self._compose(question, passages) if passages else NO_SOURCES_ANSWER
        text, finish = _truncate(text, max_tokens or self.max_tokens)
        prompt_tokens = count_prompt_tokens(str(m.content) for m in messages)
        completion = count_tokens(text)
        usage = UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion,
                              total_tokens=prompt_tokens + completion)
        return text, finish, usage

    async def _compose(self, question: str, passages: Sequence[Passage]) -> str:
        candidates = [(p, s) for p in passages for s in sentences(p.text)][:MAX_SENTENCES]
        if not candidates:
            return NO_SOURCES_ANSWER
        vectors = await self.embedder.embed([question, *(s for _, s in candidates)])
        query, rest = vectors[0], vectors[1:]
        scored = sorted(((cosine(query, v), p, s) for v, (p, s) in zip(rest, candidates,
                                                                        strict=True)),
                        key=lambda item: item[0], reverse=True)
        chosen = [(p, s) for score, p, s in scored[:MAX_QUOTES] if score >= MIN_RELEVANCE]
        if not chosen:
            _, passage, sentence = scored[0]
            return f"{NO_MATCH_ANSWER}\n\n> {sentence} [{passage.number}]"
        quotes = "\n".join(f"> {s} [{p.number}]" for p, s in chosen)
        cited = sorted({p.number: p.label for p, _ in chosen}.items())
        legend = "\n".join(f"[{n}] {label}" for n, label in cited)
        return f"{PREAMBLE}\n\n{quotes}\n\n{legend}"


def sentences(text: str) -> list[str]:
    """A passage's sentences worth quoting (three words or more)."""
    found = []
    for raw in _SENTENCE_END.split(text):
        sentence = " ".join(raw.split())
        if len(sentence.split()) >= 3:
            found.append(sentence[:MAX_SENTENCE_CHARS])
    return found


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _truncate(text: str, max_tokens: int | None) -> tuple[str, str]:
    if max_tokens is None or count_tokens(text) <= max_tokens:
        return text, "stop"
    kept, used = [], 0
    for piece in _PIECE.findall(text):
        cost = count_tokens(piece)
        if used + cost > max_tokens:
            break
        kept.append(piece)
        used += cost
    return "".join(kept).rstrip(), "length"
