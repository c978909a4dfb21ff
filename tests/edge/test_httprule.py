"""Path templates and the path matcher (unit level; the HTTP cases are in
test_transcoding.py)."""

from __future__ import annotations

import re

import pytest

from gateway.httprule import PathMatcher, TemplateError, envoy_regex, parse_template, unescape


@pytest.mark.parametrize("bad", ["v1/x", "/v1/{x", "/v1/**/a/**", "/v1/**/{x}", "/v1//x",
                                 "/v1/{1x}"])
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(bad)


def test_literals_beat_wildcards_and_the_matcher_backtracks() -> None:
    matcher: PathMatcher[str] = PathMatcher()
    matcher.register("GET", "/v1/{name=things/*}", "wild")
    matcher.register("GET", "/v1/things/special", "literal")
    matcher.register("GET", "/v1/{a=*}/x/y", "backtrack")
    assert matcher.lookup("GET", "/v1/things/special").value == "literal"  # type: ignore[union-attr]
    assert matcher.lookup("GET", "/v1/things/other").value == "wild"  # type: ignore[union-attr]
    found = matcher.lookup("GET", "/v1/things/x/y")
    assert found is not None and found.value == "backtrack"
    assert found.bindings == ((("a",), "things"),)
    assert matcher.lookup("POST", "/v1/things/special") is None


def test_a_template_registered_twice_matches_nothing() -> None:
    matcher: PathMatcher[str] = PathMatcher()
    matcher.register("GET", "/v1/{name=a/*}", "one")
    matcher.register("GET", "/v1/{other=a/*}", "two")
    assert matcher.lookup("GET", "/v1/a/b") is None


def test_only_registered_verbs_are_split_off() -> None:
    matcher: PathMatcher[str] = PathMatcher()
    matcher.register("POST", "/v1/{name=things/*}:do", "do")
    matcher.register("POST", "/v1/{name=things/*}", "plain")
    found = matcher.lookup("POST", "/v1/things/a:other")
    assert found is not None and found.value == "plain"
    assert found.bindings == ((("name",), "things/a:other"),)
    assert matcher.lookup("POST", "/v1/things/a:do").value == "do"  # type: ignore[union-attr]


def test_unescaping_keeps_reserved_characters_only_when_asked() -> None:
    assert unescape("a%2Fb%20c%3A", keep_reserved=False) == "a/b c:"
    assert unescape("a%2Fb%20c%3A", keep_reserved=True) == "a%2Fb c%3A"
    assert unescape("%E2%82%AC%zz", keep_reserved=False) == "€%zz"
    with pytest.raises(UnicodeDecodeError):
        unescape("%FF", keep_reserved=False)


@pytest.mark.parametrize("template, matches, misses", [
    ("/v1/{name=things/*}", ["/v1/things/a", "/v1/things/a/"], ["/v1/things/a/b", "/v1/thingsx/a"]),
    ("/v1/{name=things/*}:do", ["/v1/things/a:do"], ["/v1/things/a:do/", "/v1/things/a"]),
    ("/v1/files/{path=**}", ["/v1/files", "/v1/files/a/b"], ["/v1/filesx"]),
    ("/.well-known/jwks.json", ["/.well-known/jwks.json"], ["/.well-known/jwksxjson"]),
])
def test_envoy_regexes_accept_what_the_template_matches(
        template: str, matches: list[str], misses: list[str]) -> None:
    pattern = re.compile(envoy_regex(template))
    for path in matches:
        assert pattern.search(path), path
    for path in misses:
        assert not pattern.search(path), path
