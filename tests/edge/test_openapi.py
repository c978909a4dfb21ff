"""The OpenAPI document (gateway/openapi.py): a valid OpenAPI 3.1 document, with every
HTTP rule of the API as an operation, kept current by the generator, served by the real
Envoy at /openapi.json, and true to what the edge answers: real REST responses (the
session's auth service and the edge suite's echo service, through Envoy) validate
against the schemas the served document gives for them."""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import llmmesh
import pytest
from google.protobuf import descriptor_pb2
from jsonschema import Draft202012Validator, ValidationError
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.descriptors import (
    bindings_of,
    build_pool,
    edge_descriptor_bytes,
    http_rule,
    load_descriptor_set,
)
from gateway.edge_files import openapi_document
from gateway.openapi import OPENAPI_FILE, OPENAPI_PATH
from gateway.spec import LLMMESH_SPEC
from tests.edge.conftest import Edge
from tests.edge.harness import TEST_SPEC
from tests.helpers import PASSWORD, unique_username

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "envoy" / OPENAPI_FILE
Json = dict[str, Any]
BASE = "urn:llmmesh:openapi"


def committed() -> Json:
    document: Json = json.loads(COMMITTED.read_text())
    return document


# --- the document itself --------------------------------------------------------------


def test_the_committed_document_is_valid_openapi_3_1() -> None:
    document = committed()
    validate(document)  # openapi-spec-validator: picks the 3.1 schema from `openapi`
    assert document["openapi"].startswith("3.1")


def api_rules() -> Iterator[tuple[str, str, str, str]]:
    """(service, /pkg.Service/Method, HTTP method, template) of every HTTP rule in the
    API's descriptor set, read here independently of the generator."""
    files = load_descriptor_set(llmmesh.descriptor_set_path())
    pool = build_pool(files)
    for file in files.file:
        for service in file.service:
            full = f"{file.package}.{service.name}"
            for method in pool.FindServiceByName(full).methods:
                rule = http_rule(method)
                for binding in bindings_of(rule) if rule is not None else ():
                    yield full, f"/{full}/{method.name}", binding.http_method, \
                        binding.template


def concrete(template: str) -> str:
    """A URL the template matches: every variable's wildcard replaced by `x1`."""
    def variable(match: re.Match[str]) -> str:
        _, _, pattern = match.group(1).partition("=")
        return re.sub(r"\*\*?", "x1", pattern) if pattern else "x1"
    return re.sub(r"\{([^}]*)\}", variable, template)


def operations(document: Json) -> Iterator[tuple[str, str, Json]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def test_every_http_rule_is_an_operation_with_its_method_and_security() -> None:
    document = committed()
    by_rule = {(op.get("x-grpc-method"), method, re.sub(r"\{[^}]*\}", "x1", path)): op
               for path, method, op in operations(document)}
    rules = list(api_rules())
    assert len(rules) >= 25
    for service, full_name, http_method, template in rules:
        assert service in LLMMESH_SPEC.services, f"{service} has HTTP rules but no route"
        key = (full_name, http_method, concrete(template))
        assert key in by_rule, f"{http_method} {template} ({full_name}) is not documented"
        expected = [] if full_name in LLMMESH_SPEC.public_methods else [{"bearerAuth": []}]
        assert by_rule[key]["security"] == expected, full_name
    rest = [op for _, _, op in operations(document) if "x-grpc-method" in op]
    assert len(rest) == len(rules), "an operation without a rule"
    edge = {(path, method) for path, method, op in operations(document)
            if "x-grpc-method" not in op}
    assert edge == {("/healthz", "GET"), (OPENAPI_PATH, "GET")}


def test_the_document_describes_the_edges_conventions() -> None:
    document = committed()
    schemas = document["components"]["schemas"]
    user = schemas["llmmesh.auth.v1.User"]
    assert user["required"] == ["username", "email"]  # field_behavior REQUIRED
    assert user["properties"]["monthlyTokenLimit"]["type"] == "string"  # int64
    assert user["properties"]["createTime"]["format"] == "date-time"
    assert user["properties"]["name"]["readOnly"] is True  # OUTPUT_ONLY
    assert schemas["llmmesh.chat.v1.FinishReason"]["enum"][0] == "FINISH_REASON_UNSPECIFIED"
    stream = document["paths"]["/v1/conversations:streamChat"]["post"]["responses"]["200"]
    assert stream["content"]["text/event-stream"]["x-sse-data"] == {
        "$ref": "#/components/schemas/llmmesh.chat.v1.StreamChatResponse"}
    upload = document["paths"]["/v1/documents:upload"]["post"]["requestBody"]
    assert upload["content"]["application/json"]["schema"]["type"] == "array"
    usage = document["paths"]["/v1/users/{user}/usages/{usage}"]["get"]
    assert [p["name"] for p in usage["parameters"]] == ["user", "usage"]
    bearer = document["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == \
        ("http", "bearer", "JWT")


# --- staleness --------------------------------------------------------------------------


def api_bytes() -> bytes:
    return edge_descriptor_bytes(llmmesh.descriptor_set_path().read_bytes())


def test_the_committed_document_is_what_the_generator_makes() -> None:
    assert COMMITTED.read_bytes() == openapi_document(LLMMESH_SPEC, api_bytes()), \
        "envoy/openapi.json is stale: run python scripts/gen_edge.py"


def test_a_changed_proto_comment_or_spec_changes_the_document() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(api_bytes())
    auth = next(f for f in files.file if f.name == "llmmesh/auth/v1/auth.proto")
    location = next(loc for loc in auth.source_code_info.location
                    if list(loc.path) == [6, 0, 2, 0])  # AuthService.CreateUser
    location.leading_comments = " Registers somebody.\n"
    changed = json.loads(openapi_document(LLMMESH_SPEC, files.SerializeToString()))
    assert changed["paths"]["/v1/users"]["post"]["summary"] == "Registers somebody."
    assert changed != committed()
    private = json.loads(openapi_document(replace(
        LLMMESH_SPEC, public_methods=LLMMESH_SPEC.public_methods
        - {"/llmmesh.auth.v1.AuthService/Login"}), api_bytes()))
    assert private["paths"]["/v1/auth:login"]["post"]["security"] == [{"bearerAuth": []}]


# --- served by Envoy --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def served(http: aiohttp.ClientSession, edge: Edge) -> Json:
    """The document the edge under test serves (its spec includes the echo service)."""
    origin = TEST_SPEC.cors.allow_origins[0]
    async with http.get(edge.url + OPENAPI_PATH, headers={"origin": origin}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert response.headers["access-control-allow-origin"] == origin
        body = await response.read()
    assert body == (edge.envoy.config.parent / OPENAPI_FILE).read_bytes()
    document: Json = json.loads(body)
    return document


async def test_envoy_serves_the_document_without_a_token(served: Json) -> None:
    validate(served)
    paths = served["paths"]
    assert "/v1/things/{thing}" in paths  # the test spec's echo service
    assert paths["/v1/secret"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/v1/things/{thing}"]["get"]["security"] == []


# --- the schemas hold for what the edge really answers -----------------------------------


def strict(document: Json) -> Json:
    """The document with unknown properties refused in our own messages (the document
    itself lets clients tolerate new fields), so a misnamed field fails validation."""
    document = copy.deepcopy(document)
    for name, schema in document["components"]["schemas"].items():
        ours = name.startswith(("llmmesh.", "edgetest.")) or name == "google.rpc.Status"
        if ours and "properties" in schema:
            schema["unevaluatedProperties"] = False
    return document


def validator(document: Json, pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(BASE, resource)
    return Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def response_schema(document: Json, path: str, method: str, status: str = "200",
                    media: str = "application/json", key: str = "schema"
                    ) -> Draft202012Validator:
    response = document["paths"][path][method]["responses"][status]
    pointer = f"/paths/{escape(path)}/{method}/responses/{status}"
    if "$ref" in response:  # a shared response of components/responses
        pointer = response["$ref"].removeprefix("#")
    return validator(strict(document), f"{pointer}/content/{escape(media)}/{key}")


async def rest(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
               ) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json()


async def test_real_auth_responses_validate_against_their_schemas(
        http: aiohttp.ClientSession, edge_url: str, served: Json) -> None:
    username = unique_username("oas")
    status, user = await rest(http, "POST", f"{edge_url}/v1/users", json={
        "user": {"username": username, "email": f"{username}@example.com"},
        "password": PASSWORD})
    assert status == 200, user
    response_schema(served, "/v1/users", "post").validate(user)
    status, login = await rest(http, "POST", f"{edge_url}/v1/auth:login",
                               json={"username": username, "password": PASSWORD})
    assert status == 200, login
    response_schema(served, "/v1/auth:login", "post").validate(login)
    bearer = {"authorization": f"Bearer {login['tokens']['accessToken']}"}
    status, me = await rest(http, "GET", f"{edge_url}/v1/users/me", headers=bearer)
    assert status == 200, me
    response_schema(served, "/v1/users/{user}", "get").validate(me)
    status, usage = await rest(http, "GET", f"{edge_url}/v1/users/me/usages/current",
                               headers=bearer)
    assert status == 200, usage
    response_schema(served, "/v1/users/{user}/usages/{usage}", "get").validate(usage)
    # The check has teeth: proto field names or int64 as a number are refused.
    login_schema = response_schema(served, "/v1/auth:login", "post")
    with pytest.raises(ValidationError):
        login_schema.validate({"tokens": {"access_token": "x"}})
    with pytest.raises(ValidationError):
        response_schema(served, "/v1/users", "post").validate(
            {**user, "monthlyTokenLimit": int(user["monthlyTokenLimit"])})


async def test_real_error_bodies_validate_against_the_error_schema(
        http: aiohttp.ClientSession, edge_url: str, served: Json) -> None:
    status, body = await rest(http, "POST", f"{edge_url}/v1/auth:login",
                              json={"username": "nobody-here", "password": "wrong password"})
    assert status == 401 and body["details"], body
    schema = response_schema(served, "/v1/auth:login", "post", "401")
    schema.validate(body)  # google.rpc.Status with an ErrorInfo detail
    status, body = await rest(http, "POST", f"{edge_url}/v1/fail",
                              json={"code": 3, "message": "bad", "withDetails": True})
    assert status == 400, body
    response_schema(served, "/v1/fail", "post", "4XX").validate(body)
    broken = copy.deepcopy(body)
    broken["details"][0]["reason"] = 7  # ErrorInfo.reason is a string
    with pytest.raises(ValidationError):
        schema.validate(broken)
    status, body = await rest(http, "GET", f"{edge_url}/v1/users/me")  # Envoy's own 401
    assert status == 401
    schema.validate(body)


async def test_a_rich_echo_validates_both_ways(http: aiohttp.ClientSession, edge_url: str,
                                               served: Json) -> None:
    """Every JSON mapping the echo service covers: int64, uint32, double, enums, repeated,
    nested, bytes, Timestamp, a map, through Envoy and back."""
    request = {"count": "5", "shades": ["SHADE_DARK"], "inner": {"size": 2, "tags": ["t"],
                                                                  "shade": "SHADE_LIGHT"},
               "numbers": ["1", "-2"], "ratio": 0.25, "small": 7, "flag": True,
               "blob": base64.b64encode(b"bytes").decode(), "when": "2026-01-02T03:04:05Z",
               "thing": {"displayName": "x", "labels": {"a": "b"}}}
    body_pointer = f"/paths/{escape('/v1/things/{thing}:do')}/post/requestBody/content/" \
                   f"{escape('application/json')}/schema"
    validator(strict(served), body_pointer).validate(request)
    status, echo = await rest(http, "POST", f"{edge_url}/v1/things/a:do", json=request)
    assert status == 200, echo
    assert echo["request"]["numbers"] == ["1", "-2"] and echo["metadata"]
    response_schema(served, "/v1/things/{thing}:do", "post").validate(echo)


async def test_each_documented_query_parameter_is_accepted(
        http: aiohttp.ClientSession, edge_url: str, served: Json) -> None:
    """The edge refuses unknown query parameters (400): each name the document gives is
    one Envoy's transcoder knows, and it reaches the field."""
    samples = {"string": "x1", "integer": "3", "boolean": "true", "number": "0.5"}
    parameters = served["paths"]["/v1/things"]["get"]["parameters"]
    assert {"displayName", "thing.inner.shade", "when"} <= {p["name"] for p in parameters}
    for parameter in parameters:
        schema = parameter["schema"]
        item = schema.get("items", schema)
        if "$ref" in item:  # an enum
            value = served["components"]["schemas"][item["$ref"].rsplit("/", 1)[1]]["enum"][1]
        elif item.get("format") == "date-time":
            value = "2026-01-02T03:04:05Z"
        elif item.get("format") == "byte":
            value = "eA=="
        elif item.get("format") in ("int64", "uint64"):
            value = "4"
        else:
            value = samples[item["type"]]
        status, echo = await rest(http, "GET", f"{edge_url}/v1/things",
                                  params={parameter["name"]: value})
        assert status == 200, (parameter["name"], echo)
        assert echo["request"], parameter["name"]  # the value reached a field
        response_schema(served, "/v1/things", "get").validate(echo)


async def test_sse_events_validate_against_the_stream_schema(
        http: aiohttp.ClientSession, edge_url: str, served: Json) -> None:
    response = served["paths"]["/v1/stream"]["post"]["responses"]["200"]
    assert list(response["content"]) == ["text/event-stream"]
    async with http.post(f"{edge_url}/v1/stream", json={"count": 3}) as answer:
        assert answer.status == 200
        assert answer.content_type == "text/event-stream"
        body = (await answer.read()).decode()
    events = body.split("\n\n")
    assert events.pop() == ""  # every event ends with a blank line, as documented
    assert len(events) == 3
    schema = response_schema(served, "/v1/stream", "post", media="text/event-stream",
                             key="x-sse-data")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event
        schema.validate(json.loads(event.removeprefix("data: ")))
    with pytest.raises(ValidationError):
        schema.validate({"index": "1"})  # int32 is a JSON number

