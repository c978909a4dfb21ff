"""REST -> gRPC transcoding through the edge, against the test-only EdgeTestService
(which echoes the request it decoded): path variables, bodies, query parameters,
additional bindings, response_body, HttpBody, and the JSON mapping."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.edge.conftest import EdgeUser

Json = dict[str, Any]


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, Json | str, aiohttp.typedefs.LooseHeaders]:
    async with http.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json(), response.headers
        return response.status, await response.text(), response.headers


async def echo(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Json:
    status, body, _ = await call(http, method, url, **kwargs)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_a_resource_name_variable(http: aiohttp.ClientSession, edge_url: str) -> None:
    body = await echo(http, "GET", f"{edge_url}/v1/things/abc")
    assert body["method"] == "GetThing" and body["request"] == {"name": "things/abc"}


async def test_a_nested_field_bound_from_the_path_with_a_body_field(
        http: aiohttp.ClientSession, edge_url: str) -> None:
    body = await echo(http, "PATCH", f"{edge_url}/v1/shelves/7/things/9",
                      json={"displayName": "Nine", "count": "12", "tags": ["x"]})
    assert body["method"] == "UpdateThing"
    assert body["request"] == {"thing": {"name": "shelves/7/things/9", "displayName": "Nine",
                                         "count": "12", "tags": ["x"]}}


async def test_body_field_and_query_fill_the_rest(http: aiohttp.ClientSession,
                                                  edge_url: str) -> None:
    body = await echo(http, "POST", f"{edge_url}/v1/shelves/1/things?flag=true&count=3",
                      json={"display_name": "snake case works too", "unknownField": 1})
    assert body["request"] == {"parent": "shelves/1", "count": "3", "flag": True,
                               "thing": {"displayName": "snake case works too"}}


async def test_body_star_takes_the_whole_message(http: aiohttp.ClientSession,
                                                 edge_url: str) -> None:
    body = await echo(http, "POST", f"{edge_url}/v1/things/a:do",
                      json={"count": 5, "shades": ["SHADE_DARK", 1], "inner": {"size": 2}})
    assert body["method"] == "DoThing"
    assert body["request"] == {"name": "things/a", "count": "5", "inner": {"size": 2},
                               "shades": ["SHADE_DARK", "SHADE_LIGHT"]}


async def test_the_body_value_stands_against_a_path_binding(http: aiohttp.ClientSession,
                                                            edge_url: str) -> None:
    body = await echo(http, "POST", f"{edge_url}/v1/things/a:do", json={"name": "things/b"})
    assert body["request"]["name"] == "things/b"


async def test_query_parameters_nested_repeated_enums_and_scalars(
        http: aiohttp.ClientSession, edge_url: str) -> None:
    query = ("count=-9007199254740993&tags=a&tags=b%20c&shades=SHADE_LIGHT&shades=2"
             "&inner.label=x%26y&inner.tags=t&inner.shade=SHADE_DARK&numbers=1&numbers=2"
             "&ratio=0.5&small=7&flag=false&blob=aGk&when=2024-01-02T03:04:05Z&display_name=a+b")
    body = await echo(http, "GET", f"{edge_url}/v1/things?{query}")
    assert body["method"] == "ListThings"
    assert body["request"] == {
        "count": "-9007199254740993", "tags": ["a", "b c"],
        "shades": ["SHADE_LIGHT", "SHADE_DARK"],
        "inner": {"label": "x&y", "tags": ["t"], "shade": "SHADE_DARK"},
        "numbers": ["1", "2"], "ratio": 0.5, "small": 7, "blob": "aGk=",
        "when": "2024-01-02T03:04:05Z", "displayName": "a+b"}


async def test_additional_bindings_route_to_the_same_method(http: aiohttp.ClientSession,
                                                            edge_url: str) -> None:
    first = await echo(http, "GET", f"{edge_url}/v1/shelves/2/things")
    second = await echo(http, "GET", f"{edge_url}/v1/things")
    assert first["method"] == second["method"] == "ListThings"
    assert first["request"] == {"parent": "shelves/2"} and second["request"] == {}


async def test_a_query_parameter_overrides_a_path_binding(http: aiohttp.ClientSession,
                                                          edge_url: str) -> None:
    body = await echo(http, "GET", f"{edge_url}/v1/things/abc?name=things/xyz")
    assert body["request"]["name"] == "things/xyz"


async def test_percent_decoding_of_single_and_multi_segment_variables(
        http: aiohttp.ClientSession, edge_url: str) -> None:
    single = await echo(http, "GET", f"{edge_url}/v1/labels/a%2Fb%20c%3F")
    assert single["request"]["displayName"] == "a/b c?"
    multi = await echo(http, "GET", f"{edge_url}/v1/things/a%2Fb%20c")
    assert multi["request"]["name"] == "things/a%2Fb c"
    deep = await echo(http, "GET", f"{edge_url}/v1/files/dir/sub%2Fdir/f%20g.txt")
    assert deep["request"]["path"] == "dir/sub%2Fdir/f g.txt"


async def test_trailing_slashes_and_custom_verbs(http: aiohttp.ClientSession, edge_url: str,
                                                 shared_user: EdgeUser) -> None:
    assert (await echo(http, "GET", f"{edge_url}/v1/things/abc/"))["method"] == "GetThing"
    status, _, _ = await call(http, "GET", f"{edge_url}/v1/things/a:do",
                              headers=shared_user.bearer)
    assert status == 404, "a registered verb with the wrong HTTP method matches nothing"
    status, _, _ = await call(http, "PUT", f"{edge_url}/v1/things/abc",
                              headers=shared_user.bearer)
    assert status == 404


async def test_response_body_and_http_body(http: aiohttp.ClientSession, edge_url: str) -> None:
    async with http.get(f"{edge_url}/v1/inner?count=4") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.read() == b'{"count": 4}', "the HttpBody field is the body"
    async with http.get(f"{edge_url}/v1/raw") as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/csv"
        assert response.headers["x-test-header"] == "raw"
        assert await response.read() == b"a,b\n1,2\n"


async def test_defaults_are_omitted_and_names_are_camel_case(http: aiohttp.ClientSession,
                                                             edge_url: str) -> None:
    async with http.get(f"{edge_url}/v1/things/x?count=0&flag=false") as response:
        text = await response.text()
    assert '"request":{"name":"things/x"}' in text, "zero values are not printed; JSON is compact"


@pytest.mark.parametrize("method, path, kwargs", [
    ("GET", "/v1/things/abc?count=ten", {}),
    ("GET", "/v1/things/abc?count=99999999999999999999", {}),
    ("GET", "/v1/things/abc?shade=SHADE_PURPLE", {}),
    ("GET", "/v1/things/abc?flag=maybe", {}),
    ("GET", "/v1/things/abc?nosuchfield=1", {}),
    ("GET", "/v1/things/abc?inner=x", {}),
    ("POST", "/v1/things/a:do", {"data": b"{not json"}),
    ("POST", "/v1/things/a:do", {"data": b"[1, 2]"}),
    ("POST", "/v1/things/a:do", {"data": b"\xff\xfe"}),
    ("POST", "/v1/things/a:do", {"json": {"count": "many"}}),
])
async def test_untranscodable_requests_are_400_with_a_status_body(
        http: aiohttp.ClientSession, edge_url: str, method: str, path: str,
        kwargs: dict[str, Any]) -> None:
    status, body, headers = await call(http, method, edge_url + path, **kwargs)
    assert status == 400, body
    assert isinstance(body, dict), f"{headers['content-type']}: {body!r}"
    assert body["code"] == 3 and body["message"], body
    assert not any(name.lower().startswith("grpc-") for name in headers)


async def test_an_empty_body_is_an_empty_message(http: aiohttp.ClientSession,
                                                 edge_url: str) -> None:
    body = await echo(http, "POST", f"{edge_url}/v1/things/a:do", data=b"")
    assert body["request"] == {"name": "things/a"}


async def test_unknown_paths_and_unrouted_methods_are_404(
        http: aiohttp.ClientSession, edge_url: str, shared_user: EdgeUser) -> None:
    for path in ("/v1/nothing/here", "/edgetest.v1.EdgeTestService/Hidden",
                 "/llmmesh.auth.v1.QuotaService/ReserveTokens", "/v1/things/a/b/c"):
        status, body, _ = await call(http, "POST", edge_url + path, json={},
                                           headers=shared_user.bearer)
        assert status == 404, (path, body)
        assert isinstance(body, dict) and body["code"] == 5, body
        status, body, _ = await call(http, "POST", edge_url + path, json={})
        assert status == 401, "an unrouted path needs a token before it is even resolved"
