"""Names that more than one service accepts, each defined once.

A document is `documents/{document}`, the id being the 32 lowercase hex digits the
document service gives it (a uuid4 hex); a collection is 1-64 letters, digits, '_'
or '-'. Chat checks both before it asks the document service, which checks them again.
"""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation, InvalidArgument

DOCUMENT_NAME = re.compile(r"^documents/([0-9a-f]{32})$")
COLLECTION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def document_name(document_id: str) -> str:
    """The resource name of the document with id `document_id`."""
    return f"documents/{document_id}"


def document_name_violation(name: str, field: str) -> FieldViolation | None:
    """A violation on `field` unless `name` is a document name."""
    if DOCUMENT_NAME.match(name) is None:
        return FieldViolation(field, "must be documents/{document}")
    return None


def document_id(name: str, field: str = "name") -> str:
    """The id in `documents/{document}`; InvalidArgument on `field` when malformed."""
    match = DOCUMENT_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(field, "must be documents/{document}")])
    return match.group(1)


def collection_violation(collection: str, field: str) -> FieldViolation | None:
    """A violation on `field` unless `collection` is empty (the default) or valid."""
    if collection and COLLECTION.match(collection) is None:
        return FieldViolation(field, "must be 1-64 letters, digits, '_' or '-'")
    return None
