"""The edge's one source of truth: which services are exposed, which methods are public,
which rate-limit class each method belongs to and what every class allows.

Envoy is driven by it, in every deployment:

- `gateway/envoy_config.py` turns it (with the descriptor set and a deployment target)
  into Envoy's bootstrap; `scripts/gen_edge.py` writes compose's into `envoy/` (a test
  fails when it is stale), the launcher and the tests render a local one at start-up;
- the rate limit service reads `envoy/ratelimit.yaml`, the rules generated from it.

Methods are named `/package.Service/Method`, as on the gRPC wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Unit = Literal["second", "minute", "hour", "day"]
CallerKey = Literal["user", "remote_address"]

UNIT_SECONDS: Mapping[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# Rate-limit descriptor keys, shared by Envoy's route actions and the rate limit
# service's config file.
ROUTE_CLASS_KEY = "route_class"
USER_KEY = "user"
REMOTE_ADDRESS_KEY = "remote_address"


@dataclass(frozen=True)
class Limit:
    """`requests_per_unit` requests per fixed window of one `unit`."""

    requests_per_unit: int
    unit: Unit

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(frozen=True)
class RouteClass:
    """A group of methods sharing one limit, counted per caller.

    `key` names what identifies the caller: `user` (the verified token's `sub`, for
    methods that need a token) or `remote_address` (the connection's peer address, for
    public methods). Never a header the client controls.
    """

    name: str
    key: CallerKey
    limit: Limit


@dataclass(frozen=True)
class CorsSpec:
    """CORS policy of the edge (Envoy's cors filter)."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
    allow_headers: tuple[str, ...] = ("authorization", "content-type", "x-request-id")
    expose_headers: tuple[str, ...] = ("x-request-id", "x-ratelimit-limit",
                                       "x-ratelimit-remaining", "x-ratelimit-reset")
    max_age_seconds: int = 600
    allow_credentials: bool = False


@dataclass(frozen=True)
class Upstream:
    """One backend: the cluster name (= docker-compose service name), its default gRPC
    port and the gRPC services it serves that the edge exposes."""

    name: str
    port: int
    services: tuple[str, ...]


@dataclass(frozen=True)
class EdgeSpec:
    """Everything the edge does, in every deployment."""

    domain: str
    upstreams: tuple[Upstream, ...]
    public_methods: frozenset[str]
    route_classes: tuple[RouteClass, ...]
    method_classes: Mapping[str, str]
    default_class: str
    anonymous_class: str
    per_user_limit: Limit
    cors: CorsSpec
    jwt_issuer: str = "llmmesh-auth"
    jwt_audience: str = "llmmesh"
    jwt_clock_skew_seconds: int = 30
    jwks_cache_seconds: int = 300
    user_id_header: str = "x-user-id"
    # Stripped from every client request before the JWT check (both edges).
    identity_headers: tuple[str, ...] = ("x-user-id", "x-username", "x-llmmesh-service-token",
                                         "x-llmmesh-user", "x-jwt-payload",
                                         "x-forwarded-user", "x-auth-request-user")
    max_request_body_bytes: int = 16 * 1024 * 1024
    unary_timeout_seconds: float = 60.0
    method_timeouts: Mapping[str, float] = field(default_factory=dict)
    ratelimit_timeout_seconds: float = 0.25
    ratelimit_failure_mode_deny: bool = False
    health_path: str = "/healthz"

    def __post_init__(self) -> None:
        names = [route_class.name for route_class in self.route_classes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rate-limit class in {names}")
        for name in {*self.method_classes.values(), self.default_class, self.anonymous_class}:
            if name not in names:
                raise ValueError(f"rate-limit class {name!r} is not declared")
        if self.route_class(self.default_class).key != "user":
            raise ValueError("the default class must be counted per user")
        if self.route_class(self.anonymous_class).key != "remote_address":
            raise ValueError("the anonymous class must be counted per remote address")
        for method in (*self.public_methods, *self.method_classes, *self.method_timeouts):
            if self.upstream_for(method) is None:
                raise ValueError(f"{method} is not a method of an exposed service")
        for method in self.public_methods:
            if self.route_class(self.class_of(method)).key != "remote_address":
                raise ValueError(f"public {method} must be limited per remote address")

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(service for upstream in self.upstreams for service in upstream.services)

    def upstream_for(self, method: str) -> Upstream | None:
        """The upstream serving `/pkg.Service/Method` (or `pkg.Service`)."""
        service = method.strip("/").split("/")[0]
        for upstream in self.upstreams:
            if service in upstream.services:
                return upstream
        return None

    def route_class(self, name: str) -> RouteClass:
        for route_class in self.route_classes:
            if route_class.name == name:
                return route_class
        raise KeyError(name)

    def class_of(self, method: str | None) -> str:
        """The rate-limit class of a method; unrouted requests count as default."""
        if method is None:
            return self.default_class
        if method in self.method_classes:
            return self.method_classes[method]
        return self.anonymous_class if method in self.public_methods else self.default_class

    def timeout_of(self, method: str, server_streaming: bool) -> float | None:
        """Upstream deadline in seconds; None for streams (no route timeout)."""
        if method in self.method_timeouts:
            return self.method_timeouts[method] or None
        return None if server_streaming else self.unary_timeout_seconds


def _methods(service: str, *names: str) -> list[str]:
    return [f"/{service}/{name}" for name in names]


AUTH = "llmmesh.auth.v1.AuthService"
TEAMS = "llmmesh.auth.v1.TeamService"
API_KEYS = "llmmesh.auth.v1.ApiKeyService"
CHAT = "llmmesh.chat.v1.ChatService"
DOCUMENT = "llmmesh.document.v1.DocumentService"
EMBEDDING = "llmmesh.embedding.v1.EmbeddingService"
# google.longrunning.Operations: the document service's ImportDocument operations.
OPERATIONS = "google.longrunning.Operations"

LLMMESH_SPEC = EdgeSpec(
    domain="llmmesh",
    # Internal services (llmmesh.auth.v1.QuotaService) are deliberately absent.
    upstreams=(
        Upstream("auth", 50051, (AUTH, TEAMS, API_KEYS)),
        Upstream("chat", 50052, (CHAT,)),
        Upstream("document", 50053, (DOCUMENT, OPERATIONS)),
        Upstream("embedding", 50054, (EMBEDDING,)),
    ),
    public_methods=frozenset(_methods(AUTH, "CreateUser", "Login", "RefreshToken", "GetJwks")),
    route_classes=(
        # Registration, login and refresh: per client address (no token yet).
        RouteClass("account", "remote_address", Limit(30, "minute")),
        # The JWKS: per client address; Envoy fetches it through its own listener.
        RouteClass("jwks", "remote_address", Limit(600, "minute")),
        RouteClass("chat", "user", Limit(30, "minute")),
        RouteClass("ingest", "user", Limit(20, "minute")),
        RouteClass("search", "user", Limit(120, "minute")),
        RouteClass("default", "user", Limit(120, "minute")),
    ),
    method_classes={
        **dict.fromkeys(_methods(AUTH, "CreateUser", "Login", "RefreshToken"), "account"),
        f"/{AUTH}/GetJwks": "jwks",
        **dict.fromkeys(_methods(CHAT, "Chat", "StreamChat"), "chat"),
        **dict.fromkeys(_methods(DOCUMENT, "CreateDocument", "UploadDocument",
                                 "IngestDocument", "ImportDocument"), "ingest"),
        f"/{DOCUMENT}/SearchDocuments": "search",
        f"/{EMBEDDING}/Embed": "search",
    },
    default_class="default",
    anonymous_class="account",
    # Every request with a token also counts against this, whatever its class.
    per_user_limit=Limit(300, "minute"),
    cors=CorsSpec(allow_origins=("http://localhost:3000",)),
    # A whole (non-streamed) chat answer may take a while. Embedding runs ~15-20
    # chunks/s on 2 cores: synchronous ingestion takes files up to 1 MiB (about a
    # minute); larger ones go through ImportDocument, whose call only stores the upload
    # (10 MiB: well under a second on the server; the margin is for slow client links).
    method_timeouts={f"/{CHAT}/Chat": 300.0, f"/{DOCUMENT}/CreateDocument": 300.0,
                     f"/{DOCUMENT}/UploadDocument": 300.0,
                     f"/{DOCUMENT}/ImportDocument": 120.0},
)
