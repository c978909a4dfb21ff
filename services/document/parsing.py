"""Turning uploaded bytes into text. The content decides the type: a PDF is a PDF
whatever its name, and anything that is not clean UTF-8 text is refused."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from services.runtime.errors import FieldViolation, InvalidArgument

PDF = "application/pdf"
PLAIN = "text/plain"
MARKDOWN = "text/markdown"
SUPPORTED = (PDF, PLAIN, MARKDOWN)
_MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdown")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ParsedText:
    content_type: str
    text: str


def parse(content: bytes, filename: str, claimed_type: str = "") -> ParsedText:
    """Text of an upload; INVALID_ARGUMENT (field `content`) when it cannot be used."""
    precheck(content, claimed_type)
    if content.startswith(b"%PDF-"):
        if claimed_type and claimed_type != PDF:
            raise _mismatch(claimed_type, PDF)
        return ParsedText(PDF, _pdf_text(content))
    if claimed_type == PDF:
        raise _mismatch(claimed_type, "not a PDF")
    text = _utf8_text(content)
    markdown = claimed_type == MARKDOWN or filename.lower().endswith(_MARKDOWN_EXTENSIONS)
    return ParsedText(MARKDOWN if markdown else PLAIN, text)


def precheck(content: bytes, claimed_type: str = "") -> None:
    """The checks that need no parsing (done before an upload is accepted for later)."""
    if not content:
        raise _bad("content", "the file is empty", "EMPTY_FILE")
    if claimed_type and claimed_type not in SUPPORTED:
        raise _bad("source.content_type",
                   f"unsupported content type {claimed_type!r}; use one of "
                   f"{', '.join(SUPPORTED)}", "UNSUPPORTED_CONTENT_TYPE")


def _utf8_text(content: bytes) -> str:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("content", "the file is neither a PDF nor UTF-8 text (binary?)",
                   "UNREADABLE_CONTENT") from None
    controls = len(_CONTROL.findall(text[:65536]))
    if "\x00" in text or controls > max(8, len(text[:65536]) // 200):
        raise _bad("content", "the file looks binary, not text", "UNREADABLE_CONTENT")
    if not text.strip():
        raise _bad("content", "the file holds no text", "NO_TEXT")
    return text


def _pdf_text(content: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError,
            RecursionError):  # pypdf raises many kinds on a broken file
        raise _bad("content", "the PDF is corrupt or unreadable", "CORRUPT_PDF") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise _bad("content", "the PDF has no extractable text (a scan without a text "
                              "layer?)", "PDF_WITHOUT_TEXT")
    return text


def _mismatch(claimed: str, actual: str) -> InvalidArgument:
    return _bad("source.content_type", f"claimed {claimed} but the content is {actual}",
                "CONTENT_TYPE_MISMATCH")


def _bad(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)], reason=reason)
