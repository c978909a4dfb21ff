"""`authorization` values: the Bearer scheme in any case (RFC 7235), one b64token."""

from __future__ import annotations

import pytest

from services.runtime.authn import bearer_token
from services.runtime.errors import Unauthenticated

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.mark.parametrize("value", [
    f"Bearer {JWT}", f"bearer {JWT}", f"BEARER {JWT}", f"bEaReR {JWT}",
    f"Bearer   {JWT}", f"  Bearer {JWT}  ",
])
def test_the_scheme_is_case_insensitive_and_spaces_are_lenient(value: str) -> None:
    assert bearer_token(value) == JWT


@pytest.mark.parametrize("token", ["abc", "a-b_c.d~e+f/g", "YWJj==", "head.payload."])
def test_any_b64token_is_taken_as_is(token: str) -> None:
    assert bearer_token(f"Bearer {token}") == token


@pytest.mark.parametrize("value", [
    "", "Bearer", "Bearer ", "Bearer  ", f"Bearer{JWT}", f"Basic {JWT}",
    f"Bearer {JWT} extra", f"Bearer\t{JWT}", "Bearer a=b", "Bearer =abc",
    f"Token {JWT}", f"Bearerx {JWT}",
])
def test_anything_else_is_a_malformed_token(value: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(value)
    assert caught.value.reason == "MALFORMED_TOKEN"
