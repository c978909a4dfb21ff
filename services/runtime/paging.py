"""AIP-158 pagination: page sizes with a default and a maximum, and opaque page tokens
bound to the request that made them."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

from services.runtime.errors import FieldViolation, InvalidArgument


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """`default` for 0, `maximum` for anything larger; negative sizes are refused."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_page_token(offset: int, scope: Sequence[str] = ()) -> str:
    """A token for the page starting at `offset` of the listing identified by `scope`
    (e.g. the caller and the filters), so it cannot be replayed against another one."""
    payload = json.dumps({"o": offset, "s": _digest(scope)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_page_token(token: str, scope: Sequence[str] = ()) -> int:
    """The offset in `token` (0 for an empty token); INVALID_ARGUMENT if it is not ours."""
    if not token:
        return 0
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = payload["o"]
        valid = isinstance(offset, int) and offset >= 0 and payload["s"] == _digest(scope)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument([FieldViolation("page_token",
                                              "is not a page token of this listing")])
    return int(offset)


def _digest(scope: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(scope).encode()).hexdigest()[:16]
