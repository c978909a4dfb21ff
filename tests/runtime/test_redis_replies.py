"""Typed views of Redis replies: a decoding client's strings, and what refuses the rest."""

from __future__ import annotations

import pytest

from services.runtime.redis_client import scored_members, text, text_hash


def test_a_decoded_reply_is_its_string() -> None:
    assert text("abc") == "abc"
    assert text_hash({"id": "u1", "count": "2"}) == {"id": "u1", "count": "2"}


def test_an_undecoded_reply_is_refused() -> None:
    with pytest.raises(TypeError, match="decode_responses=True"):
        text(b"abc")
    with pytest.raises(TypeError, match="decode_responses=True"):
        text_hash({"id": b"u1"})


def test_scored_members_read_resp2_tuples_and_resp3_lists() -> None:
    assert scored_members([("a", 2.0), ["b", 1.0]]) == [("a", 2.0), ("b", 1.0)]
    assert scored_members([]) == []


def test_a_range_without_scores_is_refused() -> None:
    with pytest.raises(TypeError, match="withscores=True"):
        scored_members(["a", "b"])
