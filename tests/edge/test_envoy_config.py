"""The generated bootstraps are valid Envoy config and say what the spec says.

Validity, twice: every target's bootstrap passes the real `envoy --mode validate`, and
parses into Envoy's `Bootstrap` with the xds-protos messages (every `typed_config` module
imported), which names the misspelled field. Meaning: clusters exist, every public RPC
is routed and no internal one, each route carries its method's JWT requirement and
rate-limit class, REST bodies are buffered and gRPC streams are not, and the generator
refuses what Envoy would refuse at load.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import llmmesh
import pytest
import yaml
from google.protobuf import descriptor_pb2, json_format

from gateway import deployment
from gateway.descriptors import (
    build_pool,
    edge_descriptor_bytes,
    edge_descriptor_set,
    load_descriptor_set,
    methods_of,
)
from gateway.edge_files import render, write
from gateway.envoy_config import (
    BUFFER_FILTER,
    DESCRIPTOR_FILE,
    JWKS_CLUSTER,
    JWT_FILTER,
    JWT_OPTIONAL,
    JWT_REQUIRED,
    RATELIMIT_CLUSTER,
    bootstrap,
    check_bindings,
)
from gateway.envoy_process import validate
from gateway.httprule import parse_template
from gateway.spec import LLMMESH_SPEC
from services.runtime.identity_providers import OidcIssuer
from tests.edge.harness import TEST_SPEC, extra_descriptors, merge
from tests.edge.upstream import compile_descriptor_set

ROOT = Path(__file__).resolve().parents[2]
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"


@pytest.fixture(scope="module")
def bootstrap_class() -> Any:
    import envoy.config
    import envoy.extensions

    for package in (envoy.extensions, envoy.config):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith("_pb2"):
                importlib.import_module(module.name)
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    return bootstrap_pb2.Bootstrap


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(ENVOY_YAML.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pool() -> Any:
    return build_pool(edge_descriptor_set(load_descriptor_set(llmmesh.descriptor_set_path())))


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = next(item for item in config["static_resources"]["listeners"]
                    if item["name"] == "edge")
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f["typed_config"] for f in manager(config)["http_filters"] if f["name"] == name)


def test_envoy_yaml_parses_into_bootstrap(bootstrap_class: Any, config: dict[str, Any]) -> None:
    parsed = json_format.ParseDict(config, bootstrap_class())
    assert parsed.static_resources.listeners[0].address.socket_address.port_value == 8080


TARGETS = {
    # compose's own file, read from the checkout instead of the /etc/envoy mount
    "compose": lambda tmp: (LLMMESH_SPEC, replace(deployment.compose(LLMMESH_SPEC),
                                                  config_dir=str(tmp)), b""),
    "local": lambda tmp: (LLMMESH_SPEC, deployment.local(LLMMESH_SPEC, str(tmp)), b""),
    "test-suite": lambda tmp: (TEST_SPEC, deployment.local(TEST_SPEC, str(tmp),
                                                           cors_origins=("*",)),
                               extra_descriptors()),
    # Two external OIDC issuers (docs/identity.md): a jwt provider and a JWKS cluster
    # each, TLS for https.
    "oidc": lambda tmp: (LLMMESH_SPEC, deployment.local(LLMMESH_SPEC, str(tmp), oidc_issuers=(
        OidcIssuer(issuer="https://sso.example.com", audience="llmmesh",
                   jwks_uri="https://sso.example.com/certs"),
        OidcIssuer(issuer="http://127.0.0.1:8180", audience="llmmesh",
                   jwks_uri="http://127.0.0.1:8180/jwks.json"))), b""),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_generated_bootstrap_passes_envoys_own_validation(
        target: str, tmp_path: Path, bootstrap_class: Any) -> None:
    spec, where, extra = TARGETS[target](tmp_path)
    files = render(spec, llmmesh.descriptor_set_path(), where, extra_descriptors=extra)
    write(files, tmp_path)
    if target == "compose":
        committed = ENVOY_YAML.read_text().replace(deployment.COMPOSE_CONFIG_DIR,
                                                   str(tmp_path))
        assert files["envoy.yaml"].decode() == committed, "envoy/ is stale"
    result = validate(tmp_path / "envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    json_format.ParseDict(yaml.safe_load(files["envoy.yaml"]), bootstrap_class())


def test_envoy_refuses_what_the_validation_would_miss(tmp_path: Path) -> None:
    """The real binary is the last word: a cluster name that does not exist."""
    files = render(LLMMESH_SPEC, llmmesh.descriptor_set_path(),
                   deployment.local(LLMMESH_SPEC, str(tmp_path)))
    broken = files["envoy.yaml"].replace(b"cluster: chat\n", b"cluster: chatt\n", 1)
    assert broken != files["envoy.yaml"]
    write({**files, "envoy.yaml": broken}, tmp_path)
    result = validate(tmp_path / "envoy.yaml")
    assert result.returncode != 0 and "chatt" in result.stdout + result.stderr


def test_response_body_must_name_an_http_body_field(tmp_path: Path) -> None:
    files = compile_descriptor_set(tmp_path / "edgetest.binpb")
    broken = descriptor_pb2.FileDescriptorSet()
    broken.CopyFrom(files)
    from google.api import annotations_pb2

    edgetest = next(f for f in broken.file if f.name == "edgetest/v1/edgetest.proto")
    method = next(m for m in edgetest.service[0].method if m.name == "GetInner")
    method.output_type = ".edgetest.v1.Echo"
    method.options.Extensions[annotations_pb2.http].response_body = "request"
    methods = methods_of(build_pool(broken), ["edgetest.v1.EdgeTestService"])
    with pytest.raises(ValueError, match=r"must be a google\.api\.HttpBody field"):
        check_bindings(methods)
    method.options.Extensions[annotations_pb2.http].response_body = "nothing"
    methods = methods_of(build_pool(broken), ["edgetest.v1.EdgeTestService"])
    with pytest.raises(ValueError, match="is not a field"):
        check_bindings(methods)
    check_bindings(methods_of(build_pool(files), ["edgetest.v1.EdgeTestService"]))


@pytest.mark.parametrize("mutate, error", [
    (lambda c: manager(c).__setitem__("use_remote_adress", True), "use_remote_adress"),
    (lambda c: manager(c).__setitem__("codec_type", "HTTP7"), "HTTP7"),
    (lambda c: manager(c).__setitem__("stream_idle_timeout", 300), "stream_idle_timeout"),
    (lambda c: http_filter(c, "envoy.filters.http.ratelimit").__setitem__(
        "@type", "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v9.RateLimit"),
     "RateLimit"),
    (lambda c: http_filter(c, "envoy.filters.http.grpc_json_transcoder")["print_options"]
     .__setitem__("stream_sse_delimited", True), "stream_sse_delimited"),
])
def test_the_validation_rejects_mistakes(bootstrap_class: Any, config: dict[str, Any],
                                         mutate: Any, error: str) -> None:
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(json_format.ParseError, match=error):
        json_format.ParseDict(broken, bootstrap_class())


def test_the_conformance_config_for_the_test_spec_parses_too(
        bootstrap_class: Any, tmp_path: Path) -> None:
    files = merge(load_descriptor_set(llmmesh.descriptor_set_path()),
                  compile_descriptor_set(tmp_path / "edgetest.binpb"))
    methods = methods_of(build_pool(edge_descriptor_set(files)), TEST_SPEC.services)
    parsed = json_format.ParseDict(
        bootstrap(TEST_SPEC, methods, deployment.local(TEST_SPEC, str(tmp_path))),
        bootstrap_class())  # raises
    assert parsed.static_resources.listeners and parsed.static_resources.clusters


def test_every_referenced_cluster_exists(config: dict[str, Any]) -> None:
    defined = {cluster["name"] for cluster in config["static_resources"]["clusters"]}
    referenced = {value for key, value in walk(config)
                  if key in {"cluster", "cluster_name"} and isinstance(value, str)}
    assert referenced, "found no cluster references"
    assert referenced <= defined, f"undefined clusters: {referenced - defined}"
    assert {JWKS_CLUSTER, RATELIMIT_CLUSTER} <= referenced
    for upstream in LLMMESH_SPEC.upstreams:
        cluster = next(c for c in config["static_resources"]["clusters"]
                       if c["name"] == upstream.name)
        options = cluster["typed_extension_protocol_options"]
        assert "http2_protocol_options" in str(options), f"{upstream.name} is not HTTP/2"
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert address["address"]["socket_address"] == {"address": upstream.name,
                                                        "port_value": upstream.port}


def test_service_clusters_have_circuit_breakers_and_outlier_detection(
        config: dict[str, Any]) -> None:
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    services = {upstream.name for upstream in LLMMESH_SPEC.upstreams}
    assert services == {"auth", "chat", "document", "embedding"}
    for name in services:
        cluster = clusters[name]
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert thresholds["priority"] == "DEFAULT"
        # Above one chat process's own stream limit (32) and the conformance suite's load,
        # below unbounded.
        assert 256 <= thresholds["max_requests"] <= 4096, name
        assert 64 <= thresholds["max_pending_requests"] <= thresholds["max_requests"], name
        assert 64 <= thresholds["max_connections"] <= 4096, name
        outlier = cluster["outlier_detection"]
        assert outlier["consecutive_gateway_failure"] <= outlier["consecutive_5xx"], name
        assert outlier["enforcing_consecutive_gateway_failure"] == 100, name  # Envoy: 0
        assert outlier["consecutive_5xx"] >= 5, name
        assert outlier["max_ejection_percent"] <= 50, name
        assert outlier["base_ejection_time"] == "10s", name
    for name in set(clusters) - services:  # rate limit, JWKS, admin: none of it
        assert "outlier_detection" not in clusters[name], name
        assert "circuit_breakers" not in clusters[name], name


def route_for(config: dict[str, Any], path: str, method: str = "POST",
              grpc: bool = True) -> dict[str, Any]:
    """The first route Envoy's router would pick for a request (a preflight when the
    method is OPTIONS)."""
    present = {"access-control-request-method"} if method == "OPTIONS" else set()
    for route in manager(config)["route_config"]["virtual_hosts"][0]["routes"]:
        match = route["match"]
        if "grpc" in match and not grpc:
            continue
        if "path" in match and match["path"] != path:
            continue
        if "prefix" in match and not path.startswith(match["prefix"]):
            continue
        if "safe_regex" in match and not re.search(match["safe_regex"]["regex"], path):
            continue
        headers = match.get("headers", [])
        exact = {h["name"]: h["string_match"]["exact"] for h in headers
                 if "exact" in h.get("string_match", {})}
        if exact.get(":method", method) != method:
            continue
        if not {h["name"] for h in headers if h.get("present_match")} <= present:
            continue
        return route
    raise AssertionError(f"no route for {path}")


GRPC_ONLY = frozenset({"/google.longrunning.Operations/WaitOperation"})


def test_every_public_rpc_is_routed_and_no_internal_one(config: dict[str, Any],
                                                        pool: Any) -> None:
    transcoder = http_filter(config, "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["services"] == list(LLMMESH_SPEC.services)
    for method in methods_of(pool, LLMMESH_SPEC.services):
        # Google's Operations.WaitOperation has no HTTP rule: gRPC clients only.
        assert method.bindings or method.full_name in GRPC_ONLY, (
            f"{method.full_name} has no google.api.http rule")
        route = route_for(config, method.full_name)
        upstream = LLMMESH_SPEC.upstream_for(method.full_name)
        assert upstream is not None and route["route"]["cluster"] == upstream.name
        expected_timeout = "0s" if method.server_streaming else None
        if expected_timeout:
            assert route["route"]["timeout"] == expected_timeout, method.full_name
    for method in methods_of(pool, ["llmmesh.auth.v1.QuotaService"]):
        assert method.full_name.strip("/").split("/")[0] not in transcoder["services"]
        route = route_for(config, method.full_name)
        assert route["name"] == "not_found" and route["direct_response"]["status"] == 404


def sample_path(template: str) -> str:
    text = re.sub(r"\{[^}=]+=([^}]*)\}", lambda m: m.group(1), template)
    text = re.sub(r"\{[^}]+\}", "x1", text)
    return text.replace("**", "a/b").replace("*", "x1")


def jwt_requirement(route: dict[str, Any]) -> str:
    config = route.get("typed_per_filter_config", {}).get(JWT_FILTER)
    assert config is not None, f"route {route['name']} names no JWT requirement"
    if config.get("disabled"):
        return "none"
    return {JWT_REQUIRED: "required", JWT_OPTIONAL: "optional"}[config["requirement_name"]]


def test_each_route_carries_its_methods_jwt_requirement(config: dict[str, Any],
                                                        pool: Any) -> None:
    checked = 0
    for method in methods_of(pool, LLMMESH_SPEC.services):
        want = "optional" if method.full_name in LLMMESH_SPEC.public_methods else "required"
        assert jwt_requirement(route_for(config, method.full_name)) == want
        for binding in method.bindings:
            base = sample_path(binding.template)
            trailing = [] if parse_template(binding.template).verb else [base + "/"]
            for path in (base, *trailing, base.replace("/x1", "/a%2Fb")):
                route = route_for(config, path, binding.http_method, grpc=False)
                assert route["name"].startswith(method.full_name.strip("/").replace("/", ".")), (
                    f"{binding.http_method} {path} matched {route['name']}")
                assert jwt_requirement(route) == want
                checked += 1
    assert checked > 30
    assert jwt_requirement(route_for(config, "/v1/unknown", "GET", grpc=False)) == "required"
    assert jwt_requirement(route_for(config, LLMMESH_SPEC.health_path, "GET")) == "none"
    assert jwt_requirement(route_for(config, "/llmmesh.auth.v1.QuotaService/ReserveTokens",
                                     "POST")) == "required"
    rules = http_filter(config, JWT_FILTER)
    assert "rules" not in rules, "requirements come from the route, never a second list"
    preflight = route_for(config, "/v1/users/me", "OPTIONS", grpc=False)
    assert preflight["name"] == "cors_preflight" and jwt_requirement(preflight) == "none"


def test_rest_routes_carry_the_methods_rate_limit_class(config: dict[str, Any],
                                                        pool: Any) -> None:
    for method in methods_of(pool, LLMMESH_SPEC.services):
        wanted = LLMMESH_SPEC.class_of(method.full_name)
        for binding in method.bindings:
            route = route_for(config, sample_path(binding.template), binding.http_method,
                              grpc=False)
            classes = {action["generic_key"]["descriptor_value"]
                       for limit in route["route"]["rate_limits"]
                       for action in limit["actions"] if "generic_key" in action}
            assert classes == {wanted}, f"{binding.http_method} {binding.template}"
            keys = {next(iter(a)) for limit in route["route"]["rate_limits"]
                    for a in limit["actions"]}
            assert "request_headers" not in keys, "rate-limit keys must not come from headers"


def test_filters_settings_and_descriptor_set(config: dict[str, Any]) -> None:
    names = [f["name"] for f in manager(config)["http_filters"]]
    assert names == ["envoy.filters.http.cors", "envoy.filters.http.header_mutation",
                     "envoy.filters.http.lua", "envoy.filters.http.jwt_authn",
                     "envoy.filters.http.ext_authz",
                     "envoy.filters.http.ratelimit", "envoy.filters.http.buffer",
                     "envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.router"]
    removed = {m["remove"] for m in http_filter(config, "envoy.filters.http.header_mutation")
               ["mutations"]["request_mutations"]}
    assert {"x-user-id", "x-llmmesh-service-token", "x-llmmesh-api-key"} <= removed
    # The credential exchange runs only where our own token was not verified.
    ext_authz = http_filter(config, "envoy.filters.http.ext_authz")
    assert ext_authz["filter_enabled_metadata"]["invert"] is True
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "auth"
    jwt = http_filter(config, JWT_FILTER)["providers"]["llmmesh"]
    assert jwt["forward"] is True and jwt["remote_jwks"]["cache_duration"]
    assert jwt["claim_to_headers"][0]["header_name"] in removed
    assert jwt["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert "from_params" not in jwt, "never a token from the URL"
    ratelimit = http_filter(config, "envoy.filters.http.ratelimit")
    assert ratelimit["domain"] == LLMMESH_SPEC.domain
    assert float(ratelimit["timeout"].rstrip("s")) >= 0.1, "20 ms default is too tight"
    assert http_filter(config, BUFFER_FILTER)["max_request_bytes"] == \
        LLMMESH_SPEC.max_request_body_bytes
    transcoder = http_filter(config, "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["match_incoming_request_route"] is True
    assert transcoder["proto_descriptor"] == f"{deployment.COMPOSE_CONFIG_DIR}/{DESCRIPTOR_FILE}"
    api = llmmesh.descriptor_set_path().read_bytes()
    assert (ROOT / "envoy" / DESCRIPTOR_FILE).read_bytes() == edge_descriptor_bytes(api), \
        "envoy/descriptor_set.binpb is stale: run python scripts/gen_edge.py"


def test_grpc_routes_stream_bodies_and_rest_routes_buffer_them(config: dict[str, Any],
                                                               pool: Any) -> None:
    for method in methods_of(pool, LLMMESH_SPEC.services):
        route = route_for(config, method.full_name)
        assert route["typed_per_filter_config"][BUFFER_FILTER]["disabled"] is True
        for binding in method.bindings:
            rest = route_for(config, sample_path(binding.template), binding.http_method,
                             grpc=False)
            assert BUFFER_FILTER not in rest["typed_per_filter_config"]
    upload = route_for(config, "/llmmesh.document.v1.DocumentService/UploadDocument")
    assert upload["route"]["timeout"] == "300s"  # large files are imported as operations
