"""Input rules for documents: filenames, queries, and (from services/runtime/names.py,
shared with chat) document names and collections."""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation, check_fields
from services.runtime.names import collection_violation, document_id

__all__ = ["DEFAULT_COLLECTION", "DEFAULT_K", "MAX_K", "MAX_QUERY_CHARS", "check_search",
           "check_source", "collection_violation", "document_id", "filename_violation"]

DEFAULT_COLLECTION = "default"
_BAD_FILENAME = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_QUERY_CHARS = 2000
MAX_K = 50
DEFAULT_K = 5


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
