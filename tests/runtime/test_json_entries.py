"""JSON registries in one variable: every problem named by entry and field, no value
echoed, an entry's unknown keys listed together."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from services.runtime.config import ConfigError
from services.runtime.json_entries import StrictPositiveInteger, parse_entries


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    size: StrictPositiveInteger = 1
    key: SecretStr = SecretStr("")


def test_valid_entries() -> None:
    entries = parse_entries("V", '[{"id": "a"}, {"id": "b", "size": 3, "key": "k"}]', Entry)
    assert [(e.id, e.size, e.key.get_secret_value()) for e in entries] == [
        ("a", 1, ""), ("b", 3, "k")]


@pytest.mark.parametrize(("raw", "message"), [
    ("[{", r"^V is not valid JSON: "),
    ('{"id": "a"}', r"^V must be a JSON list$"),
    ("[1]", r"^V\[0\] must be an object$"),
    ("[{}]", r"^V\[0\]\.id is required$"),
    ('[{"id": "a", "size": 0}]', r"^V\[0\]\.size must be a positive integer$"),
    ('[{"id": "a", "size": true}]', r"^V\[0\]\.size must be an integer$"),
    ('[{"id": "a", "b": 1, "a": 2}]', r"^V\[0\] has unknown keys \['a', 'b'\]$"),
    ('[{"id": "a"}, {"id": 5, "size": "2"}]',
     r"^V\[1\]\.id must be a string; V\[1\]\.size must be an integer$"),
])
def test_problems_are_named(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_entries("V", raw, Entry)


def test_values_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_entries("V", '[{"id": "a", "key": ["sk-do-not-print"], "size": "sk-2"}]', Entry)
    assert "sk-" not in str(caught.value)
