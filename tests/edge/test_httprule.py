"""Path templates and the route regexes made from them (unit level; the HTTP cases, run
against Envoy, are in test_transcoding.py)."""

from __future__ import annotations

import re

import pytest

from gateway.httprule import TemplateError, envoy_regex, parse_template


@pytest.mark.parametrize("bad", ["v1/x", "/v1/{x", "/v1/**/a/**", "/v1/**/{x}", "/v1//x",
                                 "/v1/{1x}"])
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(bad)


@pytest.mark.parametrize("template, matches, misses", [
    ("/v1/{name=things/*}", ["/v1/things/a", "/v1/things/a/"],
     ["/v1/things/a/b", "/v1/thingsx/a", "/v1/things/", "/v1/things//"]),
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
