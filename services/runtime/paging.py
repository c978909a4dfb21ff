"""AIP-158 pagination: page sizes with a default and a maximum, and opaque page tokens.

A token is base64url JSON holding the position to continue from and the scope of the
listing that made it (e.g. the caller and the filters). A token from another listing,
or one a client altered, is refused with INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.runtime.errors import FieldViolation, InvalidArgument


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """`default` for 0, coerced down to `maximum`; negative sizes are refused."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return default if requested == 0 else min(requested, maximum)


def encode_page_token(scope: str, **position: Any) -> str:
    """A token for `position` (JSON values) in the listing named by `scope`."""
    raw = json.dumps({"s": _digest(scope), **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> dict[str, Any] | None:
    """The position a token holds; None for an empty token (the first page)."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        position = None
    if not isinstance(position, dict) or position.pop("s", None) != _digest(scope):
        raise InvalidArgument([FieldViolation("page_token",
                                              "is not a next_page_token of this listing")])
    return position


def decode_offset(token: str, scope: str) -> int:
    """For offset-paged listings: the offset in a token made with `o=offset` (0 if empty)."""
    position = decode_page_token(token, scope)
    if position is None:
        return 0
    offset = position.get("o")
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument([FieldViolation("page_token", "is malformed")])
    return offset


def _digest(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]
