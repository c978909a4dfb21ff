"""The prompt every model gets: instructions, retrieved sources, history, question.

Sources travel in the prompt's text as numbered blocks (`[1] file.pdf, chunk 3`),
so any chat model reads them the same way; `parse_sources` reads them back for
the extractive model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from services.chat.events import Source

INSTRUCTIONS = "You are a helpful assistant. Answer clearly and concisely."
RAG_INSTRUCTIONS = (
    "Answer from the numbered sources below and cite them like [1]. If they do not "
    "contain the answer, say so plainly instead of guessing.")
NO_SOURCES = "No sources were found in the user's documents for this question."
SOURCES_HEADING = "Sources:"
_BLOCK = re.compile(r"^\[(\d+)\] (.+?), chunk (\d+)\n", re.M)

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "{instructions}"),
    MessagesPlaceholder("history"),
    ("human", "{question}"),
])


@dataclass(frozen=True)
class HistoryMessage:
    role: str  # "user" | "assistant"
    content: str


def build_messages(question: str, history: Sequence[HistoryMessage],
                   sources: Sequence[Source] | None) -> list[BaseMessage]:
    """The model's input; `sources` is None without RAG, possibly empty with it."""
    instructions = INSTRUCTIONS
    if sources is not None:
        instructions = f"{INSTRUCTIONS}\n{RAG_INSTRUCTIONS}\n\n{context_block(sources)}"
    past: list[BaseMessage] = [
        HumanMessage(m.content) if m.role == "user" else AIMessage(m.content) for m in history]
    return PROMPT.format_messages(instructions=instructions, history=past, question=question)


def context_block(sources: Sequence[Source]) -> str:
    if not sources:
        return f"{SOURCES_HEADING}\n{NO_SOURCES}"
    blocks = [f"[{n}] {s.filename}, chunk {s.chunk_index}\n{s.text.strip()}"
              for n, s in enumerate(sources, 1)]
    return SOURCES_HEADING + "\n\n" + "\n\n".join(blocks)


@dataclass(frozen=True)
class Passage:
    number: int
    label: str  # "file.pdf, chunk 3"
    text: str


def parse_sources(messages: Sequence[BaseMessage]) -> list[Passage]:
    """The numbered source blocks in the prompt's system messages."""
    found: list[Passage] = []
    for message in messages:
        if not isinstance(message, SystemMessage) or not isinstance(message.content, str):
            continue
        _, heading, body = message.content.partition(SOURCES_HEADING)
        if not heading:
            continue
        matches = list(_BLOCK.finditer(body))
        for index, match in enumerate(matches):
            end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
            found.append(Passage(int(match.group(1)), f"{match.group(2)}, chunk {match.group(3)}",
                                 body[match.end():end].strip()))
    return found


def last_question(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.content if isinstance(message.content, str) else str(message.content)
    return ""
