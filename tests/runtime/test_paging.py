"""In-memory listings paged as AIP-158 says: default and maximum sizes, opaque tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.runtime.errors import InvalidArgument
from services.runtime.paging import Page, encode_page_token, paginate

ITEMS = [f"item-{n}" for n in range(7)]


@dataclass
class Request:
    page_size: int = 0
    page_token: str = ""


def walk(size: int, scope: str = "things") -> list[Page[str]]:
    pages = [paginate(ITEMS, Request(size), scope, default=3, maximum=5)]
    while pages[-1].next_page_token:
        request = Request(size, pages[-1].next_page_token)
        pages.append(paginate(ITEMS, request, scope, default=3, maximum=5))
    return pages


def test_pages_cover_the_listing_once_in_order() -> None:
    pages = walk(2)
    assert [list(page.items) for page in pages] == [ITEMS[0:2], ITEMS[2:4], ITEMS[4:6], ITEMS[6:]]
    assert pages[-1].next_page_token == ""


def test_zero_means_the_default_and_larger_sizes_are_coerced_to_the_maximum() -> None:
    assert [len(page.items) for page in walk(0)] == [3, 3, 1]
    assert [len(page.items) for page in walk(100)] == [5, 2]


def test_an_exact_fit_has_no_next_page_and_an_empty_listing_is_one_empty_page() -> None:
    assert paginate(ITEMS, Request(7), "things", default=3, maximum=10).next_page_token == ""
    assert paginate([], Request(), "things", default=3, maximum=10) == Page([], "")


def test_a_token_past_the_end_gives_an_empty_last_page() -> None:
    token = encode_page_token("things", o=50)
    assert paginate(ITEMS, Request(2, token), "things", default=3, maximum=5) == Page([], "")


@pytest.mark.parametrize(("request_", "field"), [
    (Request(-1), "page_size"),
    (Request(2, "not-a-token"), "page_token"),
    (Request(2, encode_page_token("other listing", o=2)), "page_token"),
    (Request(2, encode_page_token("things", o=-2)), "page_token"),
    (Request(2, encode_page_token("things", o="2")), "page_token"),
])
def test_bad_sizes_and_foreign_or_altered_tokens_are_refused(request_: Request,
                                                             field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        paginate(ITEMS, request_, "things", default=3, maximum=5)
    assert [violation.field for violation in caught.value.violations] == [field]
