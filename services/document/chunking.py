"""Splitting text into overlapping chunks (langchain-text-splitters)."""

from __future__ import annotations

from langchain_text_splitters import MarkdownTextSplitter, RecursiveCharacterTextSplitter

from services.document.parsing import MARKDOWN


class Chunker:
    """Splits by paragraphs, then lines, then words; Markdown by its structure first."""

    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self._plain = RecursiveCharacterTextSplitter(chunk_size=chunk_size,
                                                     chunk_overlap=chunk_overlap)
        self._markdown = MarkdownTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)

    def split(self, text: str, content_type: str) -> list[str]:
        splitter = self._markdown if content_type == MARKDOWN else self._plain
        return [chunk for chunk in splitter.split_text(text) if chunk.strip()]
