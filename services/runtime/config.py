"""Configuration from environment variables: the one place that reads them.

Every variable has a safe default for a local run. `LLMMESH_ENV=production` turns
unsafe defaults (generated keys, a generated service token, low bcrypt cost, peers
assumed on localhost) into start-up errors. Secrets are `SecretStr`: their `repr` and
`str` are masked, so a logged config never shows them.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

SERVICE_TOKEN_MIN_LENGTH = 32
PRODUCTION = "LLMMESH_ENV=production"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or unsafe."""


class Env:
    """Typed reads of environment variables with defaults and clear errors.

    An empty or all-blank value counts as unset; values are stripped.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str:
        return self._environ.get(name, "").strip()

    def text(self, name: str, default: str | None = None) -> str:
        """The value of `name`; `default` when unset, a ConfigError when there is none."""
        value = self._raw(name)
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is required")
        return default

    def optional(self, name: str) -> str | None:
        """The value of `name`, or None when unset."""
        return self._raw(name) or None

    def secret(self, name: str) -> SecretStr | None:
        """The value of `name` masked in `repr`, or None when unset."""
        value = self._raw(name)
        return SecretStr(value) if value else None

    def integer(self, name: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """An integer within [minimum, maximum]; `default` when unset."""
        raw = self._raw(name)
        try:
            value = int(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A float of at least `minimum`; `default` when unset."""
        raw = self._raw(name)
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """true/false (also 1/0, yes/no, on/off); `default` when unset."""
        raw = self._raw(name).lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where one service listens and where its peers reach it."""

    port: int
    metrics_port: int
    address: str


DEFAULT_PORTS = {"auth": 50051, "chat": 50052, "document": 50053, "embedding": 50054}
DEFAULT_METRICS_PORTS = {"auth": 9101, "chat": 9102, "document": 9103, "embedding": 9104}


# Concurrent server-streaming calls one process serves before it refuses new ones
# (services/runtime/load_shedding.py). Chat: bench/README.md (chat_bench) finds one chat
# process CPU-bound from ~16 concurrent streams (TTFT p50 83 ms at 16, 921 ms at 64); 32
# lets a burst through at about twice the knee, while past it queueing only adds latency
# to every stream, so the call is better retried on another replica. Elsewhere (document
# ingestion) a generous bound that only stops a runaway.
DEFAULT_MAX_CONCURRENT_STREAMS = {"chat": 32}
GENEROUS_MAX_CONCURRENT_STREAMS = 1024


# Worker processes per service (LLMMESH_<SERVICE>_WORKERS), all serving one port
# (services/runtime/workers.py). The default is one per usable CPU where a second process
# buys throughput, else one:
# - chat: its handlers are Python (the provider SDK, LangChain chunk handling, per-token
#   work), so one process is bound by one core (bench/README.md): one per CPU.
# - document: parsing and chunking are Python too: one per CPU, but only with a Chroma
#   server (LLMMESH_CHROMA_HOST); the embedded store is one process's, so it stays at one.
# - auth: bcrypt is the cost, and it already runs on a thread pool with the GIL released,
#   so one process uses every core; more would only multiply the Redis connections.
# - embedding: the ONNX model is loaded per process (memory) and its inference already
#   runs on every core in native threads; a second process would only contend for them.
MAX_WORKERS = 64
PER_CPU_WORKERS = {"chat", "document"}
WORKER_INDEX = "LLMMESH_WORKER_INDEX"  # set by the supervisor in each worker's environment
WORKER_FD = "LLMMESH_WORKER_FD"  # the worker's end of its link to the supervisor
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota
    (a container started with --cpus keeps every CPU in its mask)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers(env: Env, service: str) -> int:
    """How many worker processes `service` runs when LLMMESH_<SERVICE>_WORKERS is unset."""
    if service not in PER_CPU_WORKERS:
        return 1
    if service == "document" and env.optional("LLMMESH_CHROMA_HOST") is None:
        return 1
    return usable_cpus()


def service_workers(env: Env, service: str) -> int:
    """LLMMESH_<SERVICE>_WORKERS, or `default_workers`."""
    name = f"LLMMESH_{service.upper()}_WORKERS"
    workers = env.integer(name, default_workers(env, service), minimum=1, maximum=MAX_WORKERS)
    if workers > 1 and service == "document" and env.optional("LLMMESH_CHROMA_HOST") is None:
        raise ConfigError(f"{name}={workers} needs LLMMESH_CHROMA_HOST: the embedded Chroma "
                          "store may only be opened by one process")
    return workers


def endpoint(env: Env, service: str, host: str) -> ServiceEndpoint:
    """Port, metrics port and peer address of `service` (e.g. `LLMMESH_AUTH_PORT`)."""
    prefix = f"LLMMESH_{service.upper()}"
    port = env.integer(f"{prefix}_PORT", DEFAULT_PORTS[service], minimum=0, maximum=65535)
    metrics_port = env.integer(
        f"{prefix}_METRICS_PORT", DEFAULT_METRICS_PORTS[service], minimum=0, maximum=65535
    )
    connect_host = "127.0.0.1" if host in {"0.0.0.0", "::", "[::]"} else host  # noqa: S104
    address = env.text(f"{prefix}_ADDRESS", f"{connect_host}:{port}")
    return ServiceEndpoint(port=port, metrics_port=metrics_port, address=address)


def peer_address(env: Env, peer: str, *, caller: str, production: bool, host: str) -> str:
    """Where `caller` reaches `peer`: `LLMMESH_<PEER>_ADDRESS`.

    Locally it defaults to the peer's port on this host; in production it must be set,
    since that default would quietly point a container at its own loopback.
    """
    name = f"LLMMESH_{peer.upper()}_ADDRESS"
    if production and env.optional(name) is None:
        raise ConfigError(f"{name} is required when {PRODUCTION} ({caller} calls {peer})")
    return endpoint(env, peer, host).address


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings every service process shares."""

    service: str
    production: bool
    listen_host: str
    port: int
    metrics_port: int
    log_level: str
    data_dir: Path
    redis_url: str = field(repr=False)  # may carry a password
    service_token: SecretStr
    jwt_issuer: str
    jwt_audience: str
    jwt_leeway_seconds: int
    jwks_cache_seconds: int
    jwks_refetch_interval_seconds: float
    auth_address: str  # auth's own address when this is auth
    shutdown_grace_seconds: float
    drain_delay_seconds: float = 0.0
    redis_timeout_seconds: float = 5.0
    max_concurrent_streams: int = GENEROUS_MAX_CONCURRENT_STREAMS
    workers: int = 1  # processes serving `port` (see services/runtime/workers.py)
    # Set in a worker's own process only: its index, and its link to the supervisor.
    worker_index: int | None = None
    worker_fd: int | None = None

    @classmethod
    def from_env(cls, service: str, env: Env | None = None) -> RuntimeConfig:
        env = env or Env()
        environment = env.text("LLMMESH_ENV", "local").lower()
        if environment not in {"local", "production"}:
            raise ConfigError(f"LLMMESH_ENV must be local or production, got {environment!r}")
        production = environment == "production"
        host = env.text("LLMMESH_LISTEN_HOST", "127.0.0.1")
        own = endpoint(env, service, host)
        data_dir = Path(env.text("LLMMESH_DATA_DIR", ".data")).resolve()
        return cls(
            service=service,
            production=production,
            listen_host=host,
            port=own.port,
            metrics_port=own.metrics_port,
            log_level=env.text("LLMMESH_LOG_LEVEL", "INFO").upper(),
            data_dir=data_dir,
            redis_url=env.text("LLMMESH_REDIS_URL", "redis://127.0.0.1:6380/0"),
            service_token=_service_token(env, production, data_dir),
            jwt_issuer=env.text("LLMMESH_JWT_ISSUER", "llmmesh-auth"),
            jwt_audience=env.text("LLMMESH_JWT_AUDIENCE", "llmmesh"),
            jwt_leeway_seconds=env.integer("LLMMESH_JWT_LEEWAY_SECONDS", 30, minimum=0,
                                           maximum=300),
            jwks_cache_seconds=env.integer("LLMMESH_JWKS_CACHE_SECONDS", 300, minimum=1),
            jwks_refetch_interval_seconds=env.number("LLMMESH_JWKS_REFETCH_INTERVAL_SECONDS",
                                                     1.0),
            auth_address=(own.address if service == "auth" else peer_address(
                env, "auth", caller=service, production=production, host=host)),
            shutdown_grace_seconds=env.number("LLMMESH_SHUTDOWN_GRACE_SECONDS", 10.0),
            # Behind a load balancer that health-checks: keep serving this long after a
            # SIGTERM while health says NOT_SERVING, so it stops sending new calls first.
            drain_delay_seconds=env.number("LLMMESH_DRAIN_DELAY_SECONDS", 0.0),
            # A Redis that stops answering (paused, partitioned) fails a call after this
            # long (UNAVAILABLE), instead of holding it forever on a warm connection.
            redis_timeout_seconds=env.number("LLMMESH_REDIS_TIMEOUT_SECONDS", 5.0,
                                             minimum=0.01),
            max_concurrent_streams=env.integer(
                f"LLMMESH_{service.upper()}_MAX_CONCURRENT_STREAMS",
                DEFAULT_MAX_CONCURRENT_STREAMS.get(service, GENEROUS_MAX_CONCURRENT_STREAMS),
                minimum=1),
            workers=service_workers(env, service),
            worker_index=_optional_integer(env, WORKER_INDEX),
            worker_fd=_optional_integer(env, WORKER_FD),
        )

    def peer_address(self, env: Env, peer: str) -> str:
        """Where this service reaches `peer`; required in production (see `peer_address`)."""
        return peer_address(env, peer, caller=self.service, production=self.production,
                            host=self.listen_host)


def worker_environment(runtime: RuntimeConfig, index: int, port: int, fd: int,
                       metrics_dir: Path) -> dict[str, str]:
    """The environment of worker `index` of a supervised service: this process's, with the
    port the supervisor bound, the worker's link, and prometheus_client's multiprocess
    directory (read by the library itself when it is imported)."""
    prefix = f"LLMMESH_{runtime.service.upper()}"
    return {**os.environ, f"{prefix}_PORT": str(port), f"{prefix}_WORKERS": str(runtime.workers),
            WORKER_INDEX: str(index), WORKER_FD: str(fd),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}


def _optional_integer(env: Env, name: str) -> int | None:
    return env.integer(name, 0, minimum=0) if env.optional(name) is not None else None


def _service_token(env: Env, production: bool, data_dir: Path) -> SecretStr:
    """The shared credential for internal RPCs.

    Production requires `LLMMESH_SERVICE_TOKEN` (at least 32 characters). A local run
    without it shares one generated token through the data directory.
    """
    token = env.secret("LLMMESH_SERVICE_TOKEN")
    if token is not None:
        if len(token) < SERVICE_TOKEN_MIN_LENGTH:
            raise ConfigError(
                f"LLMMESH_SERVICE_TOKEN must be at least {SERVICE_TOKEN_MIN_LENGTH} characters"
            )
        return token
    if production:
        raise ConfigError(f"LLMMESH_SERVICE_TOKEN is required when {PRODUCTION}")
    path = data_dir / "secrets" / "service-token"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with open(path, "x", encoding="utf-8") as handle:  # first process wins
            os.chmod(path, 0o600)
            handle.write(secrets.token_urlsafe(32))
    except FileExistsError:
        pass
    return SecretStr(path.read_text(encoding="utf-8").strip())
