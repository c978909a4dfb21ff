"""Envoy's bootstrap (`envoy/envoy.yaml`) and the rate limit rules (`envoy/ratelimit.yaml`),
built from the edge spec and the descriptor set. `scripts/gen_edge.py` writes them.

Request path through Envoy's listener on :8080:

    cors -> header_mutation (strip client identity headers) -> jwt_authn
         -> ratelimit -> grpc_json_transcoder -> router

- REST routes match each HTTP binding (regex + method) so jwt_authn and ratelimit see
  the method's class before transcoding; after transcoding the route cache is cleared
  and the router matches the gRPC path `/pkg.Service/Method`, which gRPC clients use
  directly. A catch-all route answers 404 (and still counts against the default limit).
- jwt_authn rules: every non-public binding first (requires a token), then the public
  ones (`allow_missing`: no token is fine, a bad one is 401), then `/` requires a token.
- Rate-limit descriptors: [route_class, user] for methods needing a token (user from
  jwt_authn's verified payload in dynamic metadata), [route_class, remote_address] for
  public ones, and [user] for the per-user ceiling.
- Local replies Envoy makes itself (401/403 jwt, 404, 429, 503, 504) to non-gRPC
  requests carry a JSON google.rpc.Status, like transcoded upstream errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.descriptors import MethodInfo
from gateway.httprule import envoy_regex, parse_template
from gateway.spec import REMOTE_ADDRESS_KEY, ROUTE_CLASS_KEY, USER_KEY, EdgeSpec

ENVOY_DIR = "/etc/envoy"
DESCRIPTOR_FILE = "descriptor_set.binpb"
LISTENER_PORT = 8080
ADMIN_PORT = 9901
STATS_PORT = 9902
JWT_PROVIDER = "llmmesh"
JWT_PAYLOAD_KEY = "jwt_payload"
JWKS_CLUSTER = "edge_jwks"
RATELIMIT_CLUSTER = "ratelimit"
RATELIMIT_ADDRESS = ("ratelimit", 50060)
JWT_FILTER = "envoy.filters.http.jwt_authn"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
# gRPC code of each local reply status Envoy makes itself.
LOCAL_REPLY_CODES = {401: 16, 403: 7, 404: 5, 429: 8, 503: 14, 504: 4}

_T = "type.googleapis.com/"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def descriptor_actions(spec: EdgeSpec, class_name: str) -> list[dict[str, Any]]:
    """The route's `rate_limits` for a rate-limit class."""
    route_class = spec.route_class(class_name)
    class_action = {"generic_key": {"descriptor_key": ROUTE_CLASS_KEY,
                                    "descriptor_value": class_name}}
    user_action = {"metadata": {
        "descriptor_key": USER_KEY, "source": "DYNAMIC",
        "metadata_key": {"key": JWT_FILTER,
                         "path": [{"key": JWT_PAYLOAD_KEY}, {"key": "sub"}]}}}
    if route_class.key == "remote_address":
        return [{"actions": [class_action, {"remote_address": {}}]}]
    return [{"actions": [class_action, user_action]}, {"actions": [user_action]}]


def _route_action(spec: EdgeSpec, method: MethodInfo) -> dict[str, Any]:
    upstream = spec.upstream_for(method.full_name)
    assert upstream is not None
    timeout = spec.timeout_of(method.full_name, method.server_streaming)
    return {"cluster": upstream.name, "timeout": _duration(timeout or 0)}


def _specificity(template: str) -> tuple[int, int, int]:
    parsed = parse_template(template)
    literals = sum(1 for s in parsed.segments if s not in {"*", "**"})
    return (0 if parsed.verb else 1, -literals, 1 if "**" in parsed.segments else 0)


def routes(spec: EdgeSpec, methods: Sequence[MethodInfo]) -> list[dict[str, Any]]:
    rest, grpc = [], []
    for method in methods:
        action = _route_action(spec, method)
        limits = descriptor_actions(spec, spec.class_of(method.full_name))
        name = method.full_name.strip("/").replace("/", ".")
        for index, binding in enumerate(method.bindings):
            rest.append((_specificity(binding.template), {
                "name": f"{name}.http{index}",
                "match": {"safe_regex": {"regex": envoy_regex(binding.template)},
                          "headers": [{"name": ":method",
                                       "string_match": {"exact": binding.http_method}}]},
                "route": {**action, "rate_limits": limits}}))
        grpc.append({"name": name, "match": {"path": method.full_name, "grpc": {}},
                     "route": {**action, "rate_limits": limits}})
    rest.sort(key=lambda item: item[0])
    health = {"name": "healthz", "match": {"path": spec.health_path},
              "direct_response": {"status": 200, "body": {"inline_string": "OK\n"}},
              "typed_per_filter_config": {TRANSCODER_FILTER: {
                  "@type": _T + "envoy.config.route.v3.FilterConfig", "disabled": True}}}
    # Counted by the virtual host's default-class limits (a direct response has no
    # route action to carry its own).
    fallback = {"name": "not_found", "match": {"prefix": "/"},
                "direct_response": {"status": 404}}
    return [health, *(route for _, route in rest), *grpc, fallback]


def jwt_rules(spec: EdgeSpec, methods: Sequence[MethodInfo]) -> list[dict[str, Any]]:
    required = {"provider_name": JWT_PROVIDER}
    optional = {"requires_any": {"requirements": [required, {"allow_missing": {}}]}}
    private, public = [], []
    for method in methods:
        rules = [{"match": {"safe_regex": {"regex": envoy_regex(binding.template)},
                            "headers": [{"name": ":method",
                                         "string_match": {"exact": binding.http_method}}]}}
                 for binding in method.bindings]
        rules.append({"match": {"path": method.full_name}})
        is_public = method.full_name in spec.public_methods
        for rule in rules:
            rule["requires"] = optional if is_public else required
        (public if is_public else private).extend(rules)
    return [{"match": {"path": spec.health_path}}, *private, *public,
            {"match": {"prefix": "/"}, "requires": required}]


def _local_reply_config() -> dict[str, Any]:
    not_grpc = {"header_filter": {"header": {
        "name": "content-type", "string_match": {"prefix": "application/grpc"},
        "invert_match": True, "treat_missing_header_as_empty": True}}}
    mappers = []
    for status, code in LOCAL_REPLY_CODES.items():
        mappers.append({
            "filter": {"and_filter": {"filters": [
                {"status_code_filter": {"comparison": {
                    "op": "EQ", "value": {"default_value": status,
                                          "runtime_key": f"edge.local_reply.{status}"}}}},
                not_grpc]}},
            "body_format_override": {
                "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%"},
                "content_type": "application/json"}})
    return {"mappers": mappers}


def _cluster(name: str, host: str, port: int, *, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STRICT_DNS", "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host,
                                                         "port_value": port}}}}]}]}}
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster


def _filters(spec: EdgeSpec, methods: Sequence[MethodInfo]) -> list[dict[str, Any]]:
    return [
        {"name": "envoy.filters.http.cors", "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": header}
                                                for header in spec.identity_headers]}}},
        {"name": JWT_FILTER, "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {JWT_PROVIDER: {
                "issuer": spec.jwt_issuer, "audiences": [spec.jwt_audience],
                "remote_jwks": {
                    # Envoy's own listener transcodes this to auth's GetJwks.
                    "http_uri": {"uri": f"http://127.0.0.1:{LISTENER_PORT}"
                                        "/.well-known/jwks.json",
                                 "cluster": JWKS_CLUSTER, "timeout": "5s"},
                    "cache_duration": _duration(spec.jwks_cache_seconds),
                    "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
                    "retry_policy": {"num_retries": 3}},
                "forward": True, "payload_in_metadata": JWT_PAYLOAD_KEY,
                "claim_to_headers": [{"header_name": spec.user_id_header,
                                      "claim_name": "sub"}],
                "clock_skew_seconds": spec.jwt_clock_skew_seconds,
                "require_expiration": True,
                "jwt_cache_config": {"jwt_cache_size": 1000}}},
            "rules": jwt_rules(spec, methods)}},
        {"name": "envoy.filters.http.ratelimit", "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": spec.domain,
            "timeout": _duration(spec.ratelimit_timeout_seconds),
            "failure_mode_deny": spec.ratelimit_failure_mode_deny,
            "status_on_error": {"code": "ServiceUnavailable"},
            "rate_limited_as_resource_exhausted": True,
            # The service sends x-ratelimit-* itself (response_headers_to_add).
            "enable_x_ratelimit_headers": "OFF",
            "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {
                "envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}}}}},
        {"name": TRANSCODER_FILTER, "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.grpc_json_transcoder.v3."
                          "GrpcJsonTranscoder",
            "proto_descriptor": f"{ENVOY_DIR}/{DESCRIPTOR_FILE}",
            "services": list(spec.services),
            "print_options": {"add_whitespace": False, "always_print_primitive_fields": False,
                              "always_print_enums_as_ints": False,
                              "preserve_proto_field_names": False,
                              "stream_sse_style_delimited": True},
            "convert_grpc_status": True,
            "url_unescape_spec": "ALL_CHARACTERS_EXCEPT_RESERVED",
            "max_request_body_size": spec.max_request_body_bytes,
            "request_validation_options": {"reject_unknown_method": True,
                                           "reject_unknown_query_parameters": True}}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.router.v3.Router"}},
    ]


def _cors_policy(spec: EdgeSpec) -> dict[str, Any]:
    cors = spec.cors
    origins = [{"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
               for origin in cors.allow_origins]
    return {"@type": _T + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": origins,
            "allow_methods": ", ".join(cors.allow_methods),
            "allow_headers": ", ".join(cors.allow_headers),
            "expose_headers": ", ".join(cors.expose_headers),
            "max_age": str(cors.max_age_seconds),
            "allow_credentials": cors.allow_credentials}


def _stats_listener() -> dict[str, Any]:
    """Prometheus scrapes /stats/prometheus here; the admin API itself stays on loopback."""
    return {"name": "stats", "address": {"socket_address": {"address": "0.0.0.0",  # noqa: S104
                                                            "port_value": STATS_PORT}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.network.http_connection_manager."
                                  "v3.HttpConnectionManager",
                    "stat_prefix": "stats",
                    "route_config": {"name": "stats", "virtual_hosts": [{
                        "name": "stats", "domains": ["*"],
                        "routes": [{"match": {"path": "/stats/prometheus"},
                                    "route": {"cluster": "envoy_admin"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": _T + "envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def bootstrap(spec: EdgeSpec, methods: Sequence[MethodInfo],
              addresses: Mapping[str, tuple[str, int]] | None = None) -> dict[str, Any]:
    """Envoy's bootstrap for `spec`; `methods` are the routed ones (with their bindings).

    Upstream clusters reach `<upstream name>:<port>` (the docker-compose services) unless
    `addresses` says otherwise.
    """
    addresses = addresses or {}
    manager = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3."
                      "HttpConnectionManager",
        "stat_prefix": "edge", "codec_type": "AUTO",
        # The peer address is the client: rate-limit keys never come from X-Forwarded-For.
        "use_remote_address": True, "xff_num_trusted_hops": 0,
        "always_set_request_id_in_response": True,
        "stream_idle_timeout": "300s",
        "local_reply_config": _local_reply_config(),
        "route_config": {"name": "edge", "virtual_hosts": [{
            "name": "llmmesh", "domains": ["*"],
            "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(spec)},
            "rate_limits": descriptor_actions(spec, spec.default_class),
            "routes": routes(spec, methods)}]},
        "http_filters": _filters(spec, methods)}
    clusters = [_cluster(u.name, *addresses.get(u.name, (u.name, u.port)), http2=True)
                for u in spec.upstreams]
    clusters.append(_cluster(RATELIMIT_CLUSTER, *RATELIMIT_ADDRESS, http2=True))
    clusters.append(_cluster(JWKS_CLUSTER, "127.0.0.1", LISTENER_PORT, http2=False))
    clusters.append(_cluster("envoy_admin", "127.0.0.1", ADMIN_PORT, http2=False))
    for cluster in clusters:
        if cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
                "address"]["socket_address"]["address"] == "127.0.0.1":
            cluster["type"] = "STATIC"
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": ADMIN_PORT}}},
        "static_resources": {
            "listeners": [
                {"name": "edge",
                 "address": {"socket_address": {"address": "0.0.0.0",  # noqa: S104
                                                "port_value": LISTENER_PORT}},
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": manager}]}]},
                _stats_listener()],
            "clusters": clusters}}


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
