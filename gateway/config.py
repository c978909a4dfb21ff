"""Configuration of the local Envoy edge and the rate limit service, from the environment
(through `services.runtime.config.Env`, the one reader of os.environ).

| variable | default | meaning |
|---|---|---|
| `LLMMESH_EDGE_PORT` | `8080` | where Envoy listens (on `LLMMESH_LISTEN_HOST`) |
| `LLMMESH_EDGE_ADMIN_PORT` | `9901` | Envoy's admin interface (always on 127.0.0.1) |
| `LLMMESH_EDGE_CORS_ORIGINS` | the spec's | comma-separated allowed origins (`*` = any) |
| `LLMMESH_RATELIMIT_PORT` / `_METRICS_PORT` | `50060` / `9105` | the rate limit service |
| `LLMMESH_RATELIMIT_ADDRESS` | `127.0.0.1:<port>` | where Envoy reaches it |
| `LLMMESH_RATELIMIT_CONFIG` | `envoy/ratelimit.yaml` | limits per descriptor |
| `LLMMESH_RATELIMIT_REDIS_FAILURE` | `error` | while Redis is down: `error`, `allow`, `deny` |
| `LLMMESH_RATELIMIT_KEY_PREFIX` | `llmmesh:ratelimit:` | Redis key prefix of the counters |
| `LLMMESH_RATELIMIT_REDIS_TIMEOUT_SECONDS` | `0.2` | Redis timeout (Envoy waits 0.25 s) |
| `LLMMESH_OIDC_ISSUERS` | none | external OIDC issuers the edge verifies (docs/identity.md) |

`error` answers UNAVAILABLE and leaves the choice to the edge's failure mode (open by
default: `ratelimit_failure_mode_deny` in gateway/spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from services.runtime.config import ConfigError, Env, RuntimeConfig, endpoint
from services.runtime.identity_providers import OidcIssuer, oidc_issuers
from services.runtime.tracing import exporters_requested

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RATELIMIT_RULES = REPO_ROOT / "envoy" / "ratelimit.yaml"
EDGE_PORT = 8080
EDGE_ADMIN_PORT = 9901
RATELIMIT_PORT = 50060
RATELIMIT_METRICS_PORT = 9105
REDIS_FAILURE_MODES = ("error", "allow", "deny")


def _runtime(env: Env, service: str, port_name: str, port: int,
             metrics_name: str | None, metrics_port: int) -> RuntimeConfig:
    """The shared settings (env, host, data dir, Redis, JWT, grace) under our own ports.

    RuntimeConfig knows only the four API services' ports, so the shared fields are read
    through auth's entry and the ports replaced.
    """
    base = RuntimeConfig.from_env("auth", env)
    return replace(
        base, service=service,
        port=env.integer(port_name, port, minimum=0, maximum=65535),
        metrics_port=(env.integer(metrics_name, metrics_port, minimum=0, maximum=65535)
                      if metrics_name else 0))


def ratelimit_address(env: Env, host: str) -> str:
    port = env.integer("LLMMESH_RATELIMIT_PORT", RATELIMIT_PORT, minimum=0, maximum=65535)
    connect = "127.0.0.1" if host in {"0.0.0.0", "::", "[::]"} else host  # noqa: S104
    return env.text("LLMMESH_RATELIMIT_ADDRESS", f"{connect}:{port}")


@dataclass(frozen=True)
class RateLimitServiceConfig:
    """Settings of the rate limit service (`python -m gateway.ratelimit`)."""

    runtime: RuntimeConfig
    rules_path: Path
    redis_failure: str
    key_prefix: str
    redis_timeout_seconds: float = 0.2

    @classmethod
    def from_env(cls, env: Env | None = None) -> RateLimitServiceConfig:
        env = env or Env()
        runtime = _runtime(env, "ratelimit", "LLMMESH_RATELIMIT_PORT", RATELIMIT_PORT,
                           "LLMMESH_RATELIMIT_METRICS_PORT", RATELIMIT_METRICS_PORT)
        failure = env.text("LLMMESH_RATELIMIT_REDIS_FAILURE", "error").lower()
        if failure not in REDIS_FAILURE_MODES:
            raise ConfigError(f"LLMMESH_RATELIMIT_REDIS_FAILURE must be one of "
                              f"{', '.join(REDIS_FAILURE_MODES)}, got {failure!r}")
        return cls(
            runtime=runtime,
            rules_path=Path(env.text("LLMMESH_RATELIMIT_CONFIG", str(DEFAULT_RATELIMIT_RULES))),
            redis_failure=failure,
            key_prefix=env.text("LLMMESH_RATELIMIT_KEY_PREFIX", "llmmesh:ratelimit:"),
            # Counting must answer well inside the edge's rate-limit timeout (0.25 s).
            redis_timeout_seconds=env.number("LLMMESH_RATELIMIT_REDIS_TIMEOUT_SECONDS", 0.2,
                                             minimum=0.01),
        )


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class EdgeConfig:
    """Settings of the local Envoy edge (started by the launcher)."""

    listen_host: str
    port: int
    admin_port: int
    upstreams: dict[str, tuple[str, int]]  # upstream name (e.g. "auth") -> (host, port)
    ratelimit: tuple[str, int]
    cors_origins: tuple[str, ...] | None
    data_dir: Path
    # External OIDC issuers whose tokens the edge verifies (`deployment.local(...,
    # oidc_issuers=...)`), the same setting auth reads.
    oidc_issuers: tuple[OidcIssuer, ...] = ()
    # Where Envoy sends its spans (OTLP/gRPC): the collector the services export to.
    otlp_collector: tuple[str, int] | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> EdgeConfig:
        env = env or Env()
        runtime = RuntimeConfig.from_env("auth", env)
        host = runtime.listen_host
        origins = env.optional("LLMMESH_EDGE_CORS_ORIGINS")
        return cls(
            listen_host=host,
            port=env.integer("LLMMESH_EDGE_PORT", EDGE_PORT, minimum=0, maximum=65535),
            admin_port=env.integer("LLMMESH_EDGE_ADMIN_PORT", EDGE_ADMIN_PORT, minimum=0,
                                   maximum=65535),
            upstreams={name: _host_port(endpoint(env, name, host).address)
                       for name in ("auth", "chat", "document", "embedding")},
            ratelimit=_host_port(ratelimit_address(env, host)),
            cors_origins=(tuple(o.strip() for o in origins.split(",") if o.strip())
                          if origins else None),
            data_dir=runtime.data_dir,
            oidc_issuers=oidc_issuers(env),
            otlp_collector=otlp_collector(env),
        )


OTEL_SWITCHES = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_DEFAULT_PORT = 4317  # OTLP/gRPC's port; also the SDK's default endpoint's


def otlp_collector(env: Env) -> tuple[str, int] | None:
    """The OTLP/gRPC collector the edge sends its spans to: the one the standard OTEL_*
    variables give the services (services/runtime/tracing.py), the SDK's default
    `localhost:4317` when they ask for OTLP without an endpoint, None when they trace
    nothing over OTLP."""
    switches = {name: value for name in OTEL_SWITCHES if (value := env.optional(name))}
    try:
        wanted = exporters_requested(switches)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if "otlp" not in wanted:
        return None
    url = (switches.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
           or switches.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317")
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or OTLP_DEFAULT_PORT
    except ValueError as error:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT: bad port in {url!r}") from error
    if not parts.hostname:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT: no host in {url!r}")
    return parts.hostname, port
