"""Envoy's bootstrap and the rate limit rules, built from the edge spec, the descriptor
set and a deployment target (`gateway.deployment`). `scripts/gen_edge.py` writes the
compose target to `envoy/`; the launcher and the tests write the local target at start.

Request path through the edge listener:

    cors -> header_mutation (strip client identity headers) -> lua (normalise the
    Bearer scheme; move an API key aside) -> jwt_authn -> ext_authz -> ratelimit ->
    buffer -> grpc_json_transcoder -> router

- Routes: `/healthz`; `GET /openapi.json` (the OpenAPI document, from the file beside
  the bootstrap, through an internal listener: the cors filter does not act on a
  direct response, and the document is fetched across origins); `GET /`, `/app.js`,
  `/app.css` (the web chat page, gateway/webpage.py, served the same way); CORS preflights
  (OPTIONS with Access-Control-Request-Method, no token needed: the cors filter
  answers them); every REST binding (regex + method, most specific first); every gRPC
  method (`/pkg.Service/Method`, gRPC content type); a catch-all 404 that needs a
  token. The transcoder keeps the route that matched the
  REST request (`match_incoming_request_route`), so REST and gRPC routes each carry
  their own settings.
- JWT: each route names its requirement (`requirement_map` + per-route
  `requirement_name`): private routes need a token, public ones take none but refuse a
  bad one. Tokens come only from `Authorization: Bearer` (any case of the scheme).
- API keys and external OIDC tokens (docs/identity.md): the Lua filter moves a
  `Bearer llmk_...` key into `x-llmmesh-api-key`, so jwt_authn sees no token (but a key
  or OIDC token its worker exchanged in the last `EDGE_EXCHANGE_CACHE_SECONDS` it
  replaces by the access token it got, so the request costs what one with our token
  costs); jwt_authn
  verifies our tokens and each configured OIDC issuer's (its JWKS over a cluster of its
  own); private routes accept a missing token there, and ext_authz (auth's
  `envoy.service.auth.v3.Authorization/Check`) runs whenever our own token was not
  verified: it exchanges the key or OIDC token for our access token (replacing
  `authorization`, user in dynamic metadata) or refuses with 401 — also a missing token.
- Rate-limit descriptors: [route_class, user] and [user] for routes needing a token (the
  user from jwt_authn's verified payload, or for a key / OIDC caller from ext_authz's
  metadata: the owner), [route_class, remote_address] for public ones.
- Bodies: the buffer filter answers 413 before any upstream call for REST bodies over
  the limit; gRPC routes skip it (client-streaming uploads pass in frames).
- Local replies Envoy makes itself to non-gRPC requests are JSON `google.rpc.Status`
  bodies, like transcoded upstream errors; REST responses lose the grpc-* headers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.deployment import RATELIMIT_SERVICE, Deployment
from gateway.descriptors import MethodInfo
from gateway.httprule import envoy_regex, parse_template
from gateway.openapi import OPENAPI_FILE, OPENAPI_PATH
from gateway.spec import REMOTE_ADDRESS_KEY, ROUTE_CLASS_KEY, USER_KEY, EdgeSpec
from gateway.webpage import RESPONSE_HEADERS as WEB_RESPONSE_HEADERS
from gateway.webpage import WEB_FILES
from services.runtime.authn import (
    API_KEY_HEADER,
    API_KEY_PREFIX,
    EXCHANGED_CREDENTIAL_KEY,
    EXCHANGED_EXPIRY_KEY,
    EXCHANGED_TOKEN_KEY,
)
from services.runtime.identity_providers import OidcIssuer

DESCRIPTOR_FILE = "descriptor_set.binpb"
JWT_PROVIDER = "llmmesh"
JWT_PAYLOAD_KEY = "jwt_payload"
JWT_REQUIRED = "token_required"
JWT_OPTIONAL = "token_optional"
JWKS_CLUSTER = "edge_jwks"
JWKS_LISTENER = "jwks_internal"
JWKS_PATH = "/.well-known/jwks.json"  # the GetJwks binding
RATELIMIT_CLUSTER = "ratelimit"
ADMIN_CLUSTER = "envoy_admin"
CORS_FILTER = "envoy.filters.http.cors"
HEADER_MUTATION_FILTER = "envoy.filters.http.header_mutation"
LUA_FILTER = "envoy.filters.http.lua"
JWT_FILTER = "envoy.filters.http.jwt_authn"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_AUTHZ_TIMEOUT_SECONDS = 2.0
OIDC_PAYLOAD_KEY = "oidc_payload"
OIDC_PROVIDER = "oidc_{index}"
OIDC_CLUSTER = "oidc_jwks_{index}"
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
BUFFER_FILTER = "envoy.filters.http.buffer"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
# gRPC code of each local reply status Envoy makes itself (413: gRPC's own code for a
# message over the size limit).
LOCAL_REPLY_CODES = {400: 3, 401: 16, 403: 16, 404: 5, 413: 8, 429: 8, 500: 13, 502: 14,
                     503: 14, 504: 4}
# What a REST client must not see: gRPC framing headers the upstream sent.
GRPC_RESPONSE_HEADERS = ("grpc-status", "grpc-message", "grpc-accept-encoding",
                         "grpc-encoding", "grpc-status-details-bin")
REALM = "llmmesh"
OPENAPI_CLUSTER = "edge_openapi"
OPENAPI_LISTENER = "openapi_internal"
# Envoy reads a direct response's file at load and refuses one over this size (its
# default is 4 KiB); the OpenAPI document is ~100 KiB.
MAX_DIRECT_RESPONSE_BYTES = 4 * 1024 * 1024

_T = "type.googleapis.com/"

# How long an Envoy worker reuses the access token ext_authz exchanged an API key or an
# OIDC token for, and for how many credentials at most: such a request then costs what
# one with our own token costs, and a revoked key still stops within this plus auth's
# own cache (1 s). Never past the exchanged token's expiry (itself never past the key's
# or the OIDC token's).
EDGE_EXCHANGE_CACHE_SECONDS = 2
EDGE_EXCHANGE_CACHE_ENTRIES = 4096

# RFC 7235: the auth scheme is case-insensitive, jwt_authn's prefix match is not.
# A credential this worker exchanged moments ago is replaced by the access token it got,
# which jwt_authn verifies like any of ours (ext_authz runs only when no token of ours
# was verified). Otherwise an API key, no JWT, is carried aside for ext_authz, past
# jwt_authn; on the way back the exchange ext_authz left in its metadata is kept.
_BEARER_LUA = f"""
local exchanged = {{}}
local entries = 0

function envoy_on_request(handle)
  local headers = handle:headers()
  local value = headers:get("authorization")
  if value == nil then return end
  local scheme, token = string.match(value, "^%s*(%S+)%s+(.-)%s*$")
  if scheme == nil or string.lower(scheme) ~= "bearer" then return end
  local hit = exchanged[token]
  if hit ~= nil and hit[2] > os.time() then
    headers:replace("authorization", "Bearer " .. hit[1])
  elseif string.sub(token, 1, {len(API_KEY_PREFIX)}) == "{API_KEY_PREFIX}" then
    headers:remove("authorization")
    headers:replace("{API_KEY_HEADER}", token)
  elseif scheme ~= "Bearer" then
    headers:replace("authorization", "Bearer " .. token)
  end
end

function envoy_on_response(handle)
  local authz = handle:streamInfo():dynamicMetadata():get("{EXT_AUTHZ_FILTER}")
  if authz == nil or authz.{EXCHANGED_TOKEN_KEY} == nil then return end
  local credential = authz.{EXCHANGED_CREDENTIAL_KEY}
  if credential == nil then return end
  if entries >= {EDGE_EXCHANGE_CACHE_ENTRIES} then
    exchanged = {{}}
    entries = 0
  end
  if exchanged[credential] == nil then entries = entries + 1 end
  local until_ = math.min(os.time() + {EDGE_EXCHANGE_CACHE_SECONDS},
                          (authz.{EXCHANGED_EXPIRY_KEY} or 0) - 1)
  exchanged[credential] = {{authz.{EXCHANGED_TOKEN_KEY}, until_}}
end
"""
OTLP_CLUSTER = "opentelemetry_collector"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _T + type_name, **fields}


def descriptor_actions(spec: EdgeSpec, class_name: str) -> list[dict[str, Any]]:
    """The route's `rate_limits` for a rate-limit class."""
    route_class = spec.route_class(class_name)
    class_action = {"generic_key": {"descriptor_key": ROUTE_CLASS_KEY,
                                    "descriptor_value": class_name}}
    user_action = {"metadata": {
        "descriptor_key": USER_KEY, "source": "DYNAMIC",
        "metadata_key": {"key": JWT_FILTER,
                         "path": [{"key": JWT_PAYLOAD_KEY}, {"key": "sub"}]}}}
    # A key or OIDC caller: the owner ext_authz named (one of the two is ever present).
    owner_action = {"metadata": {
        "descriptor_key": USER_KEY, "source": "DYNAMIC",
        "metadata_key": {"key": EXT_AUTHZ_FILTER, "path": [{"key": "user"}]}}}
    if route_class.key == "remote_address":
        return [{"actions": [class_action, {"remote_address": {}}]}]
    return [{"actions": [class_action, user_action]}, {"actions": [user_action]},
            {"actions": [class_action, owner_action]}, {"actions": [owner_action]}]


def _jwt(requirement: str | None) -> dict[str, Any]:
    config = _typed("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig")
    if requirement is None:
        config["disabled"] = True
    else:
        config["requirement_name"] = requirement
    return config


def _no_ext_authz() -> dict[str, Any]:
    return _typed("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                  disabled=True)


def _disabled() -> dict[str, Any]:
    return _typed("envoy.config.route.v3.FilterConfig", disabled=True)


def _rest_only() -> dict[str, Any]:
    return _typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
                  mutations={"response_mutations": [{"remove": header}
                                                    for header in GRPC_RESPONSE_HEADERS]})


def _specificity(template: str) -> tuple[int, int, int]:
    parsed = parse_template(template)
    literals = sum(1 for s in parsed.segments if s not in {"*", "**"})
    return (0 if parsed.verb else 1, -literals, 1 if "**" in parsed.segments else 0)


def check_bindings(methods: Sequence[MethodInfo]) -> None:
    """Refuse HTTP rules Envoy's transcoder refuses at load (a config that never starts).

    `response_body` must name a top-level field of type `google.api.HttpBody`.
    """
    for method in methods:
        output = method.descriptor.output_type
        for binding in method.bindings:
            if not binding.response_body:
                continue
            field = output.fields_by_name.get(binding.response_body)
            if field is None:
                raise ValueError(f"{method.full_name}: response_body "
                                 f"{binding.response_body!r} is not a field of "
                                 f"{output.full_name}")
            if field.message_type is None or \
                    field.message_type.full_name != "google.api.HttpBody":
                raise ValueError(f"{method.full_name}: response_body "
                                 f"{binding.response_body!r} must be a google.api.HttpBody "
                                 f"field (Envoy refuses any other type)")


def routes(spec: EdgeSpec, methods: Sequence[MethodInfo]) -> list[dict[str, Any]]:
    """The virtual host's routes, first match wins."""
    rest, grpc = [], []
    for method in methods:
        upstream = spec.upstream_for(method.full_name)
        assert upstream is not None
        timeout = spec.timeout_of(method.full_name, method.server_streaming)
        action = {"cluster": upstream.name, "timeout": _duration(timeout or 0),
                  "rate_limits": descriptor_actions(spec, spec.class_of(method.full_name))}
        public = method.full_name in spec.public_methods
        requirement = JWT_OPTIONAL if public else JWT_REQUIRED
        # Public methods take no credential exchange: a key there is simply not used.
        no_exchange = {EXT_AUTHZ_FILTER: _no_ext_authz()} if public else {}
        name = method.full_name.strip("/").replace("/", ".")
        for index, binding in enumerate(method.bindings):
            rest.append((_specificity(binding.template), {
                "name": f"{name}.http{index}",
                "match": {"safe_regex": {"regex": envoy_regex(binding.template)},
                          "headers": [{"name": ":method",
                                       "string_match": {"exact": binding.http_method}}]},
                "route": action,
                "typed_per_filter_config": {JWT_FILTER: _jwt(requirement),
                                            HEADER_MUTATION_FILTER: _rest_only(),
                                            **no_exchange}}))
        grpc.append({"name": name, "match": {"path": method.full_name, "grpc": {}},
                     "route": action,
                     "typed_per_filter_config": {JWT_FILTER: _jwt(requirement),
                                                 BUFFER_FILTER: _disabled(),
                                                 **no_exchange}})
    rest.sort(key=lambda item: item[0])
    health = {"name": "healthz", "match": {"path": spec.health_path},
              "direct_response": {"status": 200, "body": {"inline_string": "OK\n"}},
              "typed_per_filter_config": {JWT_FILTER: _jwt(None),
                                          EXT_AUTHZ_FILTER: _no_ext_authz(),
                                          TRANSCODER_FILTER: _disabled()}}
    # REST routes match one method each, so a preflight would otherwise fall through to
    # the catch-all (where the cors filter does not act). The cors filter answers
    # preflights from allowed origins here; others go on and end as the transcoder's 404.
    first_upstream = spec.upstreams[0].name
    preflight = {"name": "cors_preflight",
                 "match": {"prefix": "/", "headers": [
                     {"name": ":method", "string_match": {"exact": "OPTIONS"}},
                     {"name": "access-control-request-method", "present_match": True},
                     # Never a gRPC call dressed as a preflight (this route skips JWT).
                     {"name": "content-type", "string_match": {"prefix": "application/grpc"},
                      "invert_match": True, "treat_missing_header_as_empty": True}]},
                 "route": {"cluster": first_upstream, "timeout": "5s",
                           "rate_limits": descriptor_actions(spec, spec.anonymous_class)},
                 "typed_per_filter_config": {JWT_FILTER: _jwt(None),
                                             EXT_AUTHZ_FILTER: _no_ext_authz()}}
    # Counted by the virtual host's default-class limits (a direct response has no
    # route action to carry its own).
    fallback = {"name": "not_found", "match": {"prefix": "/"},
                "direct_response": {"status": 404, "body": {"inline_string": "Not Found"}},
                "typed_per_filter_config": {JWT_FILTER: _jwt(JWT_REQUIRED)}}
    return [health, _openapi_route(), *_web_routes(), preflight,
            *(route for _, route in rest), *grpc, fallback]


_GET = {"name": ":method", "string_match": {"exact": "GET"}}


def _openapi_route() -> dict[str, Any]:
    """`GET /openapi.json`: public, to the internal listener that serves the file (a
    route to a cluster, so the cors filter answers as on every other route)."""
    return {"name": "openapi", "match": {"path": OPENAPI_PATH, "headers": [_GET]},
            "route": {"cluster": OPENAPI_CLUSTER, "timeout": "5s"},
            "typed_per_filter_config": {JWT_FILTER: _jwt(None),
                                        EXT_AUTHZ_FILTER: _no_ext_authz(),
                                        TRANSCODER_FILTER: _disabled()}}


def _web_routes() -> list[dict[str, Any]]:
    """`GET /` (the web chat page, gateway/webpage.py) and its files: public, to the
    internal listener that serves the files, as `/openapi.json`."""
    return [{"name": f"web{page.path.replace('/', '_')}",
             "match": {"path": page.path, "headers": [_GET]},
             "route": {"cluster": OPENAPI_CLUSTER, "timeout": "5s"},
             "typed_per_filter_config": {JWT_FILTER: _jwt(None),
                                         EXT_AUTHZ_FILTER: _no_ext_authz(),
                                         TRANSCODER_FILTER: _disabled()}}
            for page in WEB_FILES]


def _web_file_routes(deployment: Deployment) -> list[dict[str, Any]]:
    """The internal listener's answers for the web page's files (from the config dir)."""
    return [{"match": {"path": page.path, "headers": [_GET]},
             "direct_response": {"status": 200, "body": {
                 "filename": f"{deployment.config_dir}/{page.file}"}},
             "response_headers_to_add": [{
                 "header": {"key": key, "value": value},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                 for key, value in (("content-type", page.content_type),
                                    *WEB_RESPONSE_HEADERS)]}
            for page in WEB_FILES]


def _openapi_listener(deployment: Deployment) -> dict[str, Any]:
    """The internal listener answering `GET /openapi.json` with the document file."""
    routes_ = {"name": "openapi", "max_direct_response_body_size_bytes":
               MAX_DIRECT_RESPONSE_BYTES, "virtual_hosts": [{
                   "name": "openapi", "domains": ["*"],
                   "routes": [{"match": {"path": OPENAPI_PATH, "headers": [_GET]},
                               "direct_response": {"status": 200, "body": {
                                   "filename": f"{deployment.config_dir}/{OPENAPI_FILE}"}},
                               "response_headers_to_add": [{
                                   "header": {"key": "content-type",
                                              "value": "application/json"},
                                   "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
                              *_web_file_routes(deployment),
                              {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]}
    return {"name": OPENAPI_LISTENER, "internal_listener": {},
            "filter_chains": [{"filters": [_http_manager("openapi", routes_, [_ROUTER])]}]}


def _internal_cluster(name: str, listener: str) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{
                "lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {
                    "server_listener_name": listener}}}}]}]}}


def _local_reply_config() -> dict[str, Any]:
    """JSON bodies for REST clients; one answer (401, UNAUTHENTICATED) for every token
    refusal, as the services give, with a challenge naming our realm (jwt_authn's own
    names the request URL). The first matching mapper wins."""
    # On transcoded routes the request already says application/grpc when Envoy answers
    # (an upstream down, a timeout): the transcoder's x-envoy-original-path tells them.
    not_grpc = {"or_filter": {"filters": [
        {"header_filter": {"header": {
            "name": "content-type", "string_match": {"prefix": "application/grpc"},
            "invert_match": True, "treat_missing_header_as_empty": True}}},
        {"header_filter": {"header": {"name": "x-envoy-original-path",
                                      "present_match": True}}}]}}
    with_token = {"header_filter": {"header": {"name": "authorization",
                                               "present_match": True}}}
    refused = {"or_filter": {"filters": [_status_is(401), _status_is(403)]}}
    invalid = _challenge(f'Bearer realm="{REALM}", error="invalid_token"')
    missing = _challenge(f'Bearer realm="{REALM}"')
    mappers: list[dict[str, Any]] = [
        {"filter": _all(refused, not_grpc, with_token), "status_code": 401,
         "headers_to_add": [invalid], "body_format_override": _status_json(16)},
        {"filter": _all(refused, not_grpc), "status_code": 401,
         "headers_to_add": [missing], "body_format_override": _status_json(16)},
    ]
    mappers += [{"filter": _all(_status_is(status), not_grpc),
                 "body_format_override": _status_json(code)}
                for status, code in LOCAL_REPLY_CODES.items() if status not in (401, 403)]
    # gRPC callers (Envoy makes the grpc-status from the HTTP status).
    mappers += [{"filter": _all(refused, with_token), "status_code": 401,
                 "headers_to_add": [invalid]},
                {"filter": refused, "status_code": 401, "headers_to_add": [missing]}]
    return {"mappers": mappers}


def _all(*filters: dict[str, Any]) -> dict[str, Any]:
    return {"and_filter": {"filters": list(filters)}}


def _status_json(code: int) -> dict[str, Any]:
    return {"json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json"}


def _status_is(status: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {
        "op": "EQ", "value": {"default_value": status,
                              "runtime_key": f"edge.local_reply.{status}"}}}}


def _challenge(value: str) -> dict[str, Any]:
    return {"header": {"key": "www-authenticate", "value": value},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


# A service cluster's circuit breakers: Envoy's backstop against queueing without bound in
# front of a service. Each process sheds streams past its own limit first (chat 32 per
# process, with RetryInfo; services/runtime/load_shedding.py), so these sit well above one
# process's share and above anything the conformance suite drives: they trip only when
# the replicas together are far past what they serve, and the edge answers 503 at once.
SERVICE_CIRCUIT_BREAKERS: dict[str, Any] = {"thresholds": [{
    "priority": "DEFAULT",
    "max_connections": 1024,  # HTTP/2: a handful per host in practice
    "max_pending_requests": 256,  # waiting for a connection / stream slot
    "max_requests": 1024,  # concurrent requests (streams included) to the cluster
    "max_retries": 3,
}]}
# Ejects a replica that keeps failing — refused connections, resets, UNAVAILABLE (shed
# streams included: send them to another replica) — for a short, growing time. At most
# half the replicas; with one replica Envoy's panic threshold keeps routing to it anyway.
SERVICE_OUTLIER_DETECTION: dict[str, Any] = {
    "consecutive_gateway_failure": 5,  # 502 / 503 / 504, connect failures, resets
    "enforcing_consecutive_gateway_failure": 100,
    "consecutive_5xx": 10,  # any 5xx (INTERNAL, UNKNOWN, ...)
    "enforcing_consecutive_5xx": 100,
    "interval": "5s",
    "base_ejection_time": "10s",
    "max_ejection_time": "60s",
    "max_ejection_percent": 50,
}


# A service run as several replicas (the launcher's `--replicas`): Envoy asks each
# replica's gRPC health service (grpc.health.v1) every second, also before any traffic,
# and takes a replica out of rotation after two failed checks — NOT_SERVING (a draining
# replica says so first), a refused connection or a timeout — and back after one good
# one. With every replica down, Envoy's panic threshold (50 %) routes to all of them.
REPLICA_HEALTH_CHECK: dict[str, Any] = {
    "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
    "interval_jitter": "0.1s", "unhealthy_threshold": 2, "healthy_threshold": 1,
    "grpc_health_check": {}}
# Until a check has seen a replica go, a request may still pick it: retried on another
# replica, but only when it never reached one (a refused connection or stream, a reset
# before the request was sent), so nothing runs twice. A request a replica took is never
# retried: when the replica dies under it, the client gets UNAVAILABLE (503).
REPLICA_RETRY_POLICY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": _typed(
            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}],
    "host_selection_retry_max_attempts": 3}


def _cluster(name: str, endpoints: Sequence[tuple[str, int]], *, http2: bool,
             service: bool = False) -> dict[str, Any]:
    """A cluster of `endpoints` (round robin); a `service` cluster (an llmmesh service)
    also gets circuit breakers and outlier detection; one of several endpoints (replicas)
    active gRPC health checks."""
    dns = any(not _is_ip(host) for host, _ in endpoints)
    cluster: dict[str, Any] = {
        "name": name, "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "2s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host,
                                                         "port_value": port}}}}
            for host, port in endpoints]}]}}
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}})}
    if service:
        cluster["circuit_breakers"] = copy.deepcopy(SERVICE_CIRCUIT_BREAKERS)
        cluster["outlier_detection"] = copy.deepcopy(SERVICE_OUTLIER_DETECTION)
    if http2 and len(endpoints) > 1:
        cluster["health_checks"] = [copy.deepcopy(REPLICA_HEALTH_CHECK)]
    return cluster


def _retry_across_replicas(route_list: list[dict[str, Any]], spec: EdgeSpec,
                           deployment: Deployment) -> None:
    """`REPLICA_RETRY_POLICY` on every route to a cluster of several replicas."""
    replicated = {u.name for u in spec.upstreams if len(deployment.endpoints(u.name)) > 1}
    for route in route_list:
        action = route.get("route")
        if action is not None and action.get("cluster") in replicated:
            action["retry_policy"] = copy.deepcopy(REPLICA_RETRY_POLICY)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _oidc_provider(spec: EdgeSpec, issuer: OidcIssuer, index: int) -> dict[str, Any]:
    """A configured external issuer: verified at the edge, exchanged by ext_authz."""
    return {
        "issuer": issuer.issuer, "audiences": [issuer.audience],
        "remote_jwks": {
            "http_uri": {"uri": issuer.jwks_uri, "cluster": OIDC_CLUSTER.format(index=index),
                         "timeout": "5s"},
            "cache_duration": _duration(spec.jwks_cache_seconds),
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
            "retry_policy": {"num_retries": 3}},
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": True, "payload_in_metadata": OIDC_PAYLOAD_KEY,
        "clock_skew_seconds": spec.jwt_clock_skew_seconds,
        "require_expiration": True,
        "jwt_cache_config": {"jwt_cache_size": 1000}}


def _oidc_cluster(issuer: OidcIssuer, index: int) -> dict[str, Any]:
    """The cluster an issuer's JWKS is fetched over (TLS for https)."""
    parts = urlsplit(issuer.jwks_uri)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    cluster = _cluster(OIDC_CLUSTER.format(index=index),
                       [(host, parts.port or (443 if tls else 80))], http2=False)
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls", "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", sni=host)}
    return cluster


def _jwt_filter(spec: EdgeSpec, deployment: Deployment) -> dict[str, Any]:
    required = {"provider_name": JWT_PROVIDER}
    oidc = {OIDC_PROVIDER.format(index=index): _oidc_provider(spec, issuer, index)
            for index, issuer in enumerate(deployment.oidc_issuers)}
    # A private route: our token or an OIDC issuer's, verified here, or none at all
    # (an API key moved aside, or nothing: ext_authz then decides). A token that fails
    # verification is refused here, as before.
    private = {"requires_any": {"requirements": [
        required, *({"provider_name": name} for name in oidc), {"allow_missing": {}}]}}
    return _typed(
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        providers={**oidc, JWT_PROVIDER: {
            "issuer": spec.jwt_issuer, "audiences": [spec.jwt_audience],
            "remote_jwks": {
                # An internal listener (no port) transcodes this to auth's GetJwks,
                # past no rate limit: a limiter outage must not lock every user out.
                "http_uri": {"uri": f"http://jwks.internal{JWKS_PATH}",
                             "cluster": JWKS_CLUSTER, "timeout": "5s"},
                "cache_duration": _duration(spec.jwks_cache_seconds),
                "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
                "retry_policy": {"num_retries": 3}},
            # Only the Authorization header (never ?access_token=).
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "forward": True, "payload_in_metadata": JWT_PAYLOAD_KEY,
            "claim_to_headers": [{"header_name": spec.user_id_header, "claim_name": "sub"}],
            "clock_skew_seconds": spec.jwt_clock_skew_seconds,
            "require_expiration": True,
            "jwt_cache_config": {"jwt_cache_size": 1000}}},
        requirement_map={
            JWT_REQUIRED: private,
            JWT_OPTIONAL: {"requires_any": {"requirements": [required,
                                                             {"allow_missing": {}}]}}},
        bypass_cors_preflight=True)


def _ext_authz(spec: EdgeSpec) -> dict[str, Any]:
    """Auth's credential exchange, only for requests our own token did not pass (none
    verified: an API key, an OIDC token or nothing); auth answers 401 for a bad one."""
    auth = spec.upstream_for("/llmmesh.auth.v1.AuthService/GetJwks")
    assert auth is not None
    return {"name": EXT_AUTHZ_FILTER, "typed_config": _typed(
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        grpc_service={"envoy_grpc": {"cluster_name": auth.name},
                      "timeout": _duration(EXT_AUTHZ_TIMEOUT_SECONDS)},
        transport_api_version="V3",
        failure_mode_allow=False,
        status_on_error={"code": "ServiceUnavailable"},
        filter_enabled_metadata={
            "filter": JWT_FILTER, "path": [{"key": JWT_PAYLOAD_KEY}, {"key": "sub"}],
            "value": {"present_match": True}, "invert": True})}


def _transcoder(spec: EdgeSpec, deployment: Deployment,
                services: Sequence[str]) -> dict[str, Any]:
    return {"name": TRANSCODER_FILTER, "typed_config": _typed(
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=f"{deployment.config_dir}/{DESCRIPTOR_FILE}",
        services=list(services),
        print_options={"add_whitespace": False, "always_print_primitive_fields": False,
                       "always_print_enums_as_ints": False,
                       "preserve_proto_field_names": False,
                       "stream_sse_style_delimited": True},
        convert_grpc_status=True,
        match_incoming_request_route=True,
        url_unescape_spec="ALL_CHARACTERS_EXCEPT_RESERVED",
        max_request_body_size=spec.max_request_body_bytes,
        request_validation_options={"reject_unknown_method": True,
                                    "reject_unknown_query_parameters": True})}


_ROUTER = {"name": "envoy.filters.http.router",
           "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router")}


def _jwks_listener(spec: EdgeSpec, deployment: Deployment,
                   methods: Sequence[MethodInfo]) -> dict[str, Any]:
    """Envoy's own way to auth's JWKS: GET the JWKS path, transcoded, nothing else."""
    jwks = next((m for m in methods for b in m.bindings if b.template == JWKS_PATH),
                None)
    if jwks is None:
        raise ValueError(f"no method is bound to GET {JWKS_PATH}")
    upstream = spec.upstream_for(jwks.full_name)
    assert upstream is not None
    service = jwks.full_name.strip("/").split("/")[0]
    jwks_routes: list[dict[str, Any]] = [
        {"match": {"path": JWKS_PATH,
                   "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
         "route": {"cluster": upstream.name, "timeout": "5s"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    _retry_across_replicas(jwks_routes, spec, deployment)
    routes_ = {"name": "jwks", "virtual_hosts": [{
        "name": "jwks", "domains": ["*"], "routes": jwks_routes}]}
    return {"name": JWKS_LISTENER, "internal_listener": {},
            "filter_chains": [{"filters": [_http_manager(
                "jwks", routes_, [_transcoder(spec, deployment, [service]), _ROUTER])]}]}


def _filters(spec: EdgeSpec, deployment: Deployment) -> list[dict[str, Any]]:
    return [
        {"name": CORS_FILTER, "typed_config": _typed(
            "envoy.extensions.filters.http.cors.v3.Cors")},
        {"name": HEADER_MUTATION_FILTER, "typed_config": _typed(
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [{"remove": header} for header in (
                *spec.identity_headers, API_KEY_HEADER)]})},
        {"name": LUA_FILTER, "typed_config": _typed(
            "envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code={"inline_string": _BEARER_LUA.strip() + "\n"})},
        {"name": JWT_FILTER, "typed_config": _jwt_filter(spec, deployment)},
        _ext_authz(spec),
        {"name": RATELIMIT_FILTER, "typed_config": _typed(
            "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            domain=spec.domain,
            timeout=_duration(spec.ratelimit_timeout_seconds),
            failure_mode_deny=spec.ratelimit_failure_mode_deny,
            status_on_error={"code": "ServiceUnavailable"},
            rate_limited_as_resource_exhausted=True,
            # The service sends x-ratelimit-* itself (response_headers_to_add).
            enable_x_ratelimit_headers="OFF",
            rate_limit_service={"transport_api_version": "V3", "grpc_service": {
                "envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}}})},
        {"name": BUFFER_FILTER, "typed_config": _typed(
            "envoy.extensions.filters.http.buffer.v3.Buffer",
            max_request_bytes=spec.max_request_body_bytes)},
        _transcoder(spec, deployment, spec.services),
        _ROUTER,
    ]


def _cors_policy(spec: EdgeSpec, deployment: Deployment) -> dict[str, Any]:
    cors = spec.cors
    allowed = deployment.cors_origins if deployment.cors_origins is not None \
        else cors.allow_origins
    origins = [{"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
               for origin in allowed]
    return _typed("envoy.extensions.filters.http.cors.v3.CorsPolicy",
                  allow_origin_string_match=origins,
                  allow_methods=", ".join(cors.allow_methods),
                  allow_headers=", ".join(cors.allow_headers),
                  expose_headers=", ".join(cors.expose_headers),
                  max_age=str(cors.max_age_seconds),
                  allow_credentials=cors.allow_credentials)


def _http_manager(stat_prefix: str, route_config: dict[str, Any],
                  filters: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager",
            "typed_config": _typed(
                "envoy.extensions.filters.network.http_connection_manager.v3."
                "HttpConnectionManager",
                stat_prefix=stat_prefix, **extra, route_config=route_config,
                http_filters=filters)}


def _listener(name: str, address: str, port: int, manager: dict[str, Any]) -> dict[str, Any]:
    return {"name": name,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [manager]}]}


def _stats_listener(deployment: Deployment, port: int) -> dict[str, Any]:
    """Prometheus scrapes /stats/prometheus here; the admin API itself stays on loopback."""
    router = [{"name": "envoy.filters.http.router",
               "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router")}]
    routes_ = {"name": "stats", "virtual_hosts": [{
        "name": "stats", "domains": ["*"],
        "routes": [{"match": {"path": "/stats/prometheus"},
                    "route": {"cluster": ADMIN_CLUSTER}}]}]}
    return _listener("stats", deployment.listen_address, port,
                     _http_manager("stats", routes_, router))


def _tracing(deployment: Deployment) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer, where the deployment has a collector: a span per
    request (continuing a client's `traceparent`) and one per upstream call, whose
    context the services continue (W3C `traceparent`, gRPC metadata after transcoding)."""
    if deployment.otlp_collector is None:
        return {}
    return {"tracing": {
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": _typed(
            "envoy.config.trace.v3.OpenTelemetryConfig",
            grpc_service={"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "0.250s"},
            service_name="llmmesh-edge")}}}


def bootstrap(spec: EdgeSpec, methods: Sequence[MethodInfo],
              deployment: Deployment) -> dict[str, Any]:
    """Envoy's bootstrap for `spec` in `deployment`; `methods` are the routed ones."""
    check_bindings(methods)
    edge_routes = routes(spec, methods)
    _retry_across_replicas(edge_routes, spec, deployment)
    manager = _http_manager(
        "edge",
        {"name": "edge", "virtual_hosts": [{
            "name": "llmmesh", "domains": ["*"],
            "typed_per_filter_config": {CORS_FILTER: _cors_policy(spec, deployment)},
            "rate_limits": descriptor_actions(spec, spec.default_class),
            "routes": edge_routes}]},
        _filters(spec, deployment),
        codec_type="AUTO",
        # The peer address is the client: rate-limit keys never come from X-Forwarded-For.
        use_remote_address=True, xff_num_trusted_hops=0,
        always_set_request_id_in_response=True,
        stream_idle_timeout="300s",
        local_reply_config=_local_reply_config(),
        **_tracing(deployment))
    clusters = [_cluster(u.name, deployment.endpoints(u.name), http2=True, service=True)
                for u in spec.upstreams]
    clusters.append(_cluster(RATELIMIT_CLUSTER, deployment.endpoints(RATELIMIT_SERVICE),
                             http2=True))
    clusters.append(_internal_cluster(JWKS_CLUSTER, JWKS_LISTENER))
    clusters += [_oidc_cluster(issuer, index)
                 for index, issuer in enumerate(deployment.oidc_issuers)]
    clusters.append(_internal_cluster(OPENAPI_CLUSTER, OPENAPI_LISTENER))
    if deployment.otlp_collector is not None:
        clusters.append(_cluster(OTLP_CLUSTER, [deployment.otlp_collector], http2=True))
    listeners = [_listener("edge", deployment.listen_address, deployment.listener_port,
                           manager), _jwks_listener(spec, deployment, methods),
                 _openapi_listener(deployment)]
    if deployment.stats_port is not None:
        clusters.append(_cluster(ADMIN_CLUSTER, [("127.0.0.1", deployment.admin_port)],
                                 http2=False))
        listeners.append(_stats_listener(deployment, deployment.stats_port))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": deployment.admin_port}}},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": _typed(
                "envoy.extensions.bootstrap.internal_listener.v3.InternalListener")}],
        "static_resources": {"listeners": listeners, "clusters": clusters}}


def ratelimit_rules(spec: EdgeSpec) -> dict[str, Any]:
    """The rate limit service's config (envoyproxy/ratelimit's format) for `spec`."""
    descriptors: list[dict[str, Any]] = []
    for route_class in spec.route_classes:
        key = REMOTE_ADDRESS_KEY if route_class.key == "remote_address" else USER_KEY
        descriptors.append({
            "key": ROUTE_CLASS_KEY, "value": route_class.name,
            "descriptors": [{"key": key, "rate_limit": {
                "unit": route_class.limit.unit,
                "requests_per_unit": route_class.limit.requests_per_unit}}]})
    descriptors.append({"key": USER_KEY, "rate_limit": {
        "unit": spec.per_user_limit.unit,
        "requests_per_unit": spec.per_user_limit.requests_per_unit}})
    return {"domain": spec.domain, "descriptors": descriptors}
