"""AIP-158 pagination: page sizes with a default and a maximum, opaque page tokens, and
`paginate` for listings held in memory.

A token is base64url JSON holding the position to continue from and the scope of the
listing that made it (e.g. the caller and the filters). A token from another listing,
or one a client altered, is refused with INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from services.runtime.errors import FieldViolation, InvalidArgument

Item = TypeVar("Item")


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


class PageRequest(Protocol):
    """Any AIP-158 List request."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


@dataclass(frozen=True)
class Page(Generic[Item]):
    """One page of a listing and the token of the next (empty on the last page)."""

    items: Sequence[Item]
    next_page_token: str


def paginate(items: Sequence[Item], request: PageRequest, scope: str, *, default: int,
             maximum: int) -> Page[Item]:
    """The page of an in-memory listing (`items`, in a stable order) that `request` asks for."""
    size = page_size(request.page_size, default=default, maximum=maximum)
    offset = decode_offset(request.page_token, scope)
    end = offset + size
    return Page(items[offset:end], encode_page_token(scope, o=end) if end < len(items) else "")
