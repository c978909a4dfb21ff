"""Where an edge runs: the addresses, ports and paths that differ between deployments of
the same spec. One generator (`gateway.envoy_config.bootstrap`) takes a spec and a
`Deployment`; each target is a constructor here.

- `compose()`: the docker-compose stack (`envoy/envoy.yaml`, committed): upstreams by
  service name, the descriptor set mounted at /etc/envoy, the listener on all interfaces,
  Prometheus stats on :9902.
- `local(...)`: the embedded default (`./scripts/run.sh`) and the test suite: everything
  on loopback, the descriptor set read from the checkout, written at start-up. With
  replicas (`python -m mesh --replicas chat=2`), an upstream (or the rate limit service)
  has several endpoints: its cluster lists them all, round robin, with active gRPC
  health checks (gateway/envoy_config.py).
- `kubernetes()`: the Kustomize base (`deploy/k8s/base/envoy/`, committed; a ConfigMap
  mounted at /etc/envoy): each upstream, and the rate limit service, by the name of its
  headless Service (`<name>-headless`, one DNS answer per ready pod, so Envoy's
  STRICT_DNS cluster balances requests across every pod rather than one connection to a
  virtual IP), the listener on all interfaces, Prometheus stats on :9902.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.spec import EdgeSpec
from services.runtime.identity_providers import OidcIssuer

LISTENER_PORT = 8080
ADMIN_PORT = 9901
STATS_PORT = 9902
RATELIMIT_PORT = 50060
COMPOSE_CONFIG_DIR = "/etc/envoy"
K8S_CONFIG_DIR = "/etc/envoy"
RATELIMIT_SERVICE = "ratelimit"


def headless_service(name: str) -> str:
    """The headless Service in front of a workload's pods in deploy/k8s (e.g. "auth")."""
    return f"{name}-headless"


COMPOSE_OTLP_COLLECTOR = ("jaeger", 4317)  # docker-compose.yml's trace collector


@dataclass(frozen=True)
class Deployment:
    """The per-deployment half of an Envoy bootstrap.

    `upstreams` maps an upstream's name (`EdgeSpec.upstreams[*].name`) to the host and
    port Envoy reaches it at; `ratelimit` is the rate limit service's address.
    `replicas` maps an upstream's name (or `RATELIMIT_SERVICE`) to every endpoint of a
    service run as several replicas (the first is the one in `upstreams`/`ratelimit`).
    """

    name: str
    config_dir: str
    listen_address: str
    listener_port: int
    admin_port: int
    upstreams: Mapping[str, tuple[str, int]]
    ratelimit: tuple[str, int]
    stats_port: int | None = None
    # Set only where the spec's default (the README's example origin) must be replaced.
    cors_origins: tuple[str, ...] | None = None
    replicas: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    # An OTLP/gRPC collector: Envoy then starts (or continues) a trace per request and
    # hands its context to the services in `traceparent` (None: no tracing at the edge).
    otlp_collector: tuple[str, int] | None = None
    # External OIDC issuers (LLMMESH_OIDC_ISSUERS) whose tokens the edge verifies.
    oidc_issuers: tuple[OidcIssuer, ...] = ()

    def endpoints(self, name: str) -> tuple[tuple[str, int], ...]:
        """Every endpoint of upstream `name` (or `RATELIMIT_SERVICE`)."""
        if name in self.replicas:
            return tuple(self.replicas[name])
        return (self.ratelimit if name == RATELIMIT_SERVICE else self.upstreams[name],)


def compose(spec: EdgeSpec, oidc_issuers: tuple[OidcIssuer, ...] = ()) -> Deployment:
    """docker-compose: every upstream is the compose service of the same name.
    `oidc_issuers`: external issuers the edge verifies (none in the committed file)."""
    return Deployment(
        name="compose", config_dir=COMPOSE_CONFIG_DIR,
        listen_address="0.0.0.0",  # noqa: S104 — inside the container; compose publishes it
        listener_port=LISTENER_PORT, admin_port=ADMIN_PORT, stats_port=STATS_PORT,
        upstreams={u.name: (u.name, u.port) for u in spec.upstreams},
        ratelimit=("ratelimit", RATELIMIT_PORT), otlp_collector=COMPOSE_OTLP_COLLECTOR,
        oidc_issuers=oidc_issuers)


def local(spec: EdgeSpec, config_dir: str, *, listener_port: int = LISTENER_PORT,
          admin_port: int = ADMIN_PORT, upstreams: Mapping[str, tuple[str, int]] | None = None,
          ratelimit: tuple[str, int] = ("127.0.0.1", RATELIMIT_PORT),
          listen_address: str = "127.0.0.1",
          cors_origins: tuple[str, ...] | None = None,
          replicas: Mapping[str, Sequence[tuple[str, int]]] | None = None,
          oidc_issuers: tuple[OidcIssuer, ...] = (),
          otlp_collector: tuple[str, int] | None = None) -> Deployment:
    """This machine: every upstream on 127.0.0.1 at its default port unless `upstreams`
    says otherwise; the admin interface on loopback only. `replicas`: every endpoint of
    an upstream (or of `RATELIMIT_SERVICE`) that runs as several replicas; the first
    replaces its address in `upstreams`/`ratelimit`. `otlp_collector`: where Envoy
    sends its spans (None: the edge traces nothing)."""
    addresses = {u.name: ("127.0.0.1", u.port) for u in spec.upstreams}
    addresses.update(upstreams or {})
    several = {name: tuple(endpoints) for name, endpoints in (replicas or {}).items()
               if len(endpoints) > 1}
    for name, endpoints in several.items():
        if name == RATELIMIT_SERVICE:
            ratelimit = endpoints[0]
        elif name in addresses:
            addresses[name] = endpoints[0]
        else:
            raise ValueError(f"replicas of {name!r}: no such upstream")
    return Deployment(
        name="local", config_dir=config_dir, listen_address=listen_address,
        listener_port=listener_port, admin_port=admin_port, upstreams=addresses,
        ratelimit=ratelimit, cors_origins=cors_origins, replicas=several,
        oidc_issuers=oidc_issuers, otlp_collector=otlp_collector)


def kubernetes(spec: EdgeSpec, oidc_issuers: tuple[OidcIssuer, ...] = ()) -> Deployment:
    """Kubernetes (deploy/k8s): every upstream is its headless Service, in Envoy's own
    namespace (the pod's DNS search path completes the short name). `oidc_issuers`:
    external issuers the edge verifies (none in the committed base)."""
    return Deployment(
        name="kubernetes", config_dir=K8S_CONFIG_DIR,
        listen_address="0.0.0.0",  # noqa: S104 — inside the pod; a Service exposes it
        listener_port=LISTENER_PORT, admin_port=ADMIN_PORT, stats_port=STATS_PORT,
        upstreams={u.name: (headless_service(u.name), u.port) for u in spec.upstreams},
        ratelimit=(headless_service(RATELIMIT_SERVICE), RATELIMIT_PORT),
        oidc_issuers=oidc_issuers)
