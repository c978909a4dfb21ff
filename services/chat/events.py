"""What a chat turn produces, free of transport: sources, usage and stream events.

A turn's events arrive in this order: `Started`, any number of `Delta`, then
`SourcesFound` (RAG only), then exactly one `Finished` or `Failed`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.runtime.errors import LlmmeshError


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    QUOTA_EXHAUSTED = "quota_exhausted"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"  # CancelTurn, no reader back within the grace, or shutdown

    @classmethod
    def from_provider(cls, value: str | None) -> FinishReason:
        """The reason an OpenAI-style `finish_reason` names (stop when unknown)."""
        return {"length": cls.LENGTH, "content_filter": cls.CONTENT_FILTER}.get(
            value or "", cls.STOP)


@dataclass(frozen=True)
class Source:
    """A document chunk an answer was grounded in."""

    document: str  # documents/{document}
    filename: str
    chunk_index: int
    score: float
    text: str  # the whole chunk (the prompt gets it; clients get a snippet)

    def snippet(self, limit: int = 240) -> str:
        return self.text if len(self.text) <= limit else self.text[:limit].rstrip() + "…"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Started:
    conversation_id: str
    model: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class SourcesFound:
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Finished:
    usage: Usage
    finish_reason: FinishReason
    message_name: str
    content: str
    create_time: float = 0.0
    sources: tuple[Source, ...] = field(default_factory=tuple)
    model: str = ""  # the model that answered (a fallback, maybe)

    @property
    def stored(self) -> bool:
        """Whether the turn went into the conversation's history (an empty message
        name: it did not, though the answer was delivered and charged)."""
        return bool(self.message_name)


@dataclass(frozen=True)
class Failed:
    error: LlmmeshError


Event = Started | Delta | SourcesFound | Finished | Failed
