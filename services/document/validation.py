"""Input rules for documents: names, filenames, collections, queries."""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation, InvalidArgument, check_fields

DEFAULT_COLLECTION = "default"
COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DOCUMENT_NAME = re.compile(r"^documents/([0-9a-f]{32})$")
_BAD_FILENAME = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_QUERY_CHARS = 2000
MAX_K = 50
DEFAULT_K = 5


def collection_violation(collection: str, field: str) -> FieldViolation | None:
    if collection and not COLLECTION_PATTERN.match(collection):
        return FieldViolation(field, "must be 1-64 letters, digits, '_' or '-'")
    return None


def filename_violation(filename: str, field: str) -> FieldViolation | None:
    if not filename or len(filename) > 255:
        return FieldViolation(field, "must be 1-255 characters")
    if _BAD_FILENAME.search(filename) or filename in {".", ".."}:
        return FieldViolation(field, "must be a plain file name (no path separators or "
                                     "control characters)")
    return None


def check_source(filename: str, collection: str) -> str:
    """Validate an upload's metadata; returns the collection to use."""
    check_fields([filename_violation(filename, "source.filename"),
                  collection_violation(collection, "source.collection")])
    return collection or DEFAULT_COLLECTION


def document_id(name: str, field: str = "name") -> str:
    """The id in `documents/{id}`; INVALID_ARGUMENT when malformed."""
    match = DOCUMENT_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(field, "must be documents/{document}")])
    return match.group(1)


def check_search(query: str, k: int | None, collection: str, min_score: float | None) -> int:
    """Validate a search (k None = unset); returns the k to use."""
    check_fields([
        FieldViolation("query", "is required") if not query.strip() else None,
        FieldViolation("query", f"at most {MAX_QUERY_CHARS} characters")
        if len(query) > MAX_QUERY_CHARS else None,
        FieldViolation("k", f"must be between 1 and {MAX_K}")
        if k is not None and not 1 <= k <= MAX_K else None,
        collection_violation(collection, "collection"),
        FieldViolation("min_score", "must be between -1 and 1")
        if min_score is not None and not -1.0 <= min_score <= 1.0 else None,
    ])
    return DEFAULT_K if k is None else k
