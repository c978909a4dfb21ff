"""Runs the whole mesh on this machine: a local Redis (unless LLMMESH_REDIS_URL names
one), every service as its own process on 127.0.0.1, the rate limit service and Envoy
as the edge (REST, SSE and gRPC on :8080; its bootstrap generated from gateway/spec.py
for this machine into `<data dir>/envoy/`). Waits for each to report SERVING over gRPC
health checking (Envoy: its admin /ready, then GET /healthz through the edge) and prints
the endpoints.

Each service runs LLMMESH_<SERVICE>_WORKERS worker processes on its one port (default:
one per CPU for chat, one for the others here; services/runtime/config.py says why), set
in its environment and printed in the banner. Its process is then a supervisor
(services/runtime/workers.py) whose gRPC health turns SERVING only once every worker is
up, so waiting for SERVING waits for all of them; it restarts a crashed worker itself and,
on SIGTERM, drains every worker before it exits. The launcher watches the supervisor.

`--replicas chat=2,auth=2` (or LLMMESH_REPLICAS, the same syntax; the flag wins per
service) runs a service (or the rate limit service) as N replicas: N separate processes
(each its own process group, each with its workers), replica 1 on the service's port and
metrics port, replica i on LLMMESH_<SERVICE>_REPLICA_PORTS / _REPLICA_METRICS_PORTS
(comma-separated, replicas 2..N) or else the port plus 100 * (i - 1). Replica 1 of each
service starts, and is healthy, before the others (what a first start creates in the
data dir, e.g. a generated signing key, is created by one process). Envoy's cluster for
the service lists every replica (round robin) with active gRPC health checks, so a
draining or dead replica leaves rotation (gateway/envoy_config.py). Peers inside the
mesh (chat -> auth, document, embedding; document -> auth, embedding; embedding ->
auth) do not go through the edge: each caller replica gets LLMMESH_<PEER>_ADDRESS =
`ipv4:<replica>,<replica>,...`, a gRPC target of every replica, in an order rotated per
caller, with gRPC's default pick_first policy: a caller sticks to its first replica
(callers spread over the replicas by the rotation) and moves to the next when that one
is gone or draining (a refused connection or a GOAWAY), without a restart.

A child that dies afterwards (a service or one replica of it, the rate limit service,
Envoy or Redis, which replays its AOF) is restarted on the same ports after a backoff
(0.5 s, doubling up to 10 s) and waited for until healthy again; peers reconnect by
themselves. Only when one child crashes LLMMESH_RESTART_LIMIT times (5) within
LLMMESH_RESTART_WINDOW_SECONDS (60) does the launcher give up, stop everything and exit
1. A child that fails while the mesh first starts is not retried: that is a setup
problem, reported at once.

On Ctrl-C (or SIGTERM) it stops in dependency order, one group at a time, each child
SIGTERMed and waited for (up to its grace) before the next group is signalled, so
in-flight calls drain while the peers they need are still up: the edge, then chat,
then document and embedding, then the rate limit service and auth, then Redis.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import deployment
from gateway.config import (
    RATELIMIT_METRICS_PORT,
    RATELIMIT_PORT,
    EdgeConfig,
    ratelimit_address,
)
from gateway.envoy_process import EnvoyError
from gateway.local_edge import start_local_edge
from gateway.spec import LLMMESH_SPEC
from mesh.redis_server import LocalRedis
from services.runtime.config import (
    DEFAULT_PORTS,
    ConfigError,
    Env,
    endpoint,
    service_workers,
)

SERVICES = ("auth", "embedding", "document", "chat")
RATELIMIT = "ratelimit"
REPLICABLE = (*SERVICES, RATELIMIT)
MAX_REPLICAS = 16
# Replica i (from 0) of a service listens on its port + i * REPLICA_PORT_STRIDE (and
# so its metrics port) unless LLMMESH_<SERVICE>_REPLICA_PORTS says otherwise: the
# default ports of the services are consecutive, their replicas' must not meet.
REPLICA_PORT_STRIDE = 100
# Who calls whom inside the mesh (LLMMESH_<PEER>_ADDRESS in the caller's environment).
PEERS = {"chat": ("auth", "document", "embedding"), "document": ("auth", "embedding"),
         "embedding": ("auth",)}
STARTUP_TIMEOUT_SECONDS = 120.0
# Who is stopped when: each group only once the one before it has exited, so a child
# still finishing a call can reach what it calls (chat extends holds through auth).
STOP_ORDER: tuple[tuple[str, ...], ...] = (
    ("edge",), ("chat",), ("document", "embedding"), ("ratelimit", "auth"), ("redis",))
# On top of a service's own LLMMESH_SHUTDOWN_GRACE_SECONDS: its cleanups after the drain.
STOP_MARGIN_SECONDS = 5.0
EDGE_STOP_SECONDS = 10.0
REDIS_STOP_SECONDS = 10.0
RESTART_BACKOFF_MAX_SECONDS = 10.0
# Envoy checks every second and ejects after two failures: a replica told to stop keeps
# serving this long with health NOT_SERVING, so no call sent to it meanwhile is reset.
REPLICA_DRAIN_DELAY_SECONDS = 2.5


class StopRequested(Exception):
    """Ctrl-C (or SIGTERM) arrived while a child was starting."""


@dataclass
class Child:
    name: str  # the service's name, or "<service>-<i>" for replica i (from 1) of several
    address: str
    metrics_port: int
    log_path: Path
    # Starts the process (and, for Redis and Envoy, waits until it is up).
    spawn: Callable[[], subprocess.Popen[bytes]]
    # Waits until a freshly spawned process is healthy (raises if it is not by then).
    ready: Callable[[Child, float], None]
    grace: float
    process: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    workers: int = 1  # processes serving `address` (a Python service's)
    service: str = ""  # what `name` is a replica of (stop order, replica counts)

    def __post_init__(self) -> None:
        self.service = self.service or self.name

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def parse_replicas(text: str, source: str) -> dict[str, int]:
    """`chat=2,auth=2` -> {"chat": 2, "auth": 2}; `source` names where it came from."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        name = name.lower()
        if not sep or name not in REPLICABLE or not value.isdigit() or \
                not 1 <= int(value) <= MAX_REPLICAS:
            raise ConfigError(
                f"{source}: expected SERVICE=N[,SERVICE=N...] with SERVICE one of "
                f"{', '.join(REPLICABLE)} and N from 1 to {MAX_REPLICAS}, got {item.strip()!r}")
        counts[name] = int(value)
    return counts


def replica_counts(env: Env, flag: str | None = None) -> dict[str, int]:
    """Replicas of every service: LLMMESH_REPLICAS, then `--replicas` (`flag`) on top."""
    counts = dict.fromkeys(REPLICABLE, 1)
    counts.update(parse_replicas(env.text("LLMMESH_REPLICAS", ""), "LLMMESH_REPLICAS"))
    if flag is not None:
        counts.update(parse_replicas(flag, "--replicas"))
    if counts["document"] > 1 and env.optional("LLMMESH_CHROMA_HOST") is None:
        raise ConfigError(f"{counts['document']} replicas of document need "
                          "LLMMESH_CHROMA_HOST: the embedded Chroma store may only be "
                          "opened by one process")
    return counts


def replica_ports(env: Env, service: str, port: int, metrics_port: int,
                  count: int) -> list[tuple[int, int]]:
    """(port, metrics port) of each of `count` replicas; the first is the service's own.
    A metrics port of 0 (none) stays 0."""
    prefix = f"LLMMESH_{service.upper()}"

    def listed(name: str, first: int) -> list[int]:
        raw = env.text(name, "")
        if not raw:
            return [first + i * REPLICA_PORT_STRIDE if first else 0 for i in range(count)]
        values = [value.strip() for value in raw.split(",") if value.strip()]
        if len(values) < count - 1 or not all(
                value.isdigit() and 0 < int(value) < 65536 for value in values):
            raise ConfigError(f"{name} must list {count - 1} port(s) (replicas 2 to "
                              f"{count} of {service}), got {raw!r}")
        return [first, *(int(value) for value in values[:count - 1])]

    ports = listed(f"{prefix}_REPLICA_PORTS", port)
    metrics = listed(f"{prefix}_REPLICA_METRICS_PORTS", metrics_port)
    return list(zip(ports, metrics, strict=True))


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", "[::]"} else host  # noqa: S104


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def stop_groups(names: list[str]) -> list[list[str]]:
    """`names` in the order they are stopped, grouped: anything STOP_ORDER does not
    know goes first (nothing depends on it)."""
    known = {name for group in STOP_ORDER for name in group}
    groups = [[name for name in names if name not in known]]
    groups += [[name for name in group if name in names] for group in STOP_ORDER]
    return [group for group in groups if group]


class Mesh:
    """The processes of one local mesh."""

    def __init__(self, env: dict[str, str], out: IO[str] = sys.stdout,
                 replicas: str | None = None) -> None:
        self.env = env
        self.out = out
        reader = Env(env)
        self.data_dir = Path(reader.text("LLMMESH_DATA_DIR", ".data")).resolve()
        self.env["LLMMESH_DATA_DIR"] = str(self.data_dir)
        self.redis: LocalRedis | None = None
        self.children: list[Child] = []
        self._stopping = threading.Event()
        self.edge_admin_port = 0
        self.otlp_collector: tuple[str, int] | None = None  # set when the edge starts
        self.restart_backoff = reader.number("LLMMESH_RESTART_BACKOFF_SECONDS", 0.5)
        self.restart_limit = reader.integer("LLMMESH_RESTART_LIMIT", 5, minimum=1)
        self.restart_window = reader.number("LLMMESH_RESTART_WINDOW_SECONDS", 60.0)
        self.service_grace = (reader.number("LLMMESH_SHUTDOWN_GRACE_SECONDS", 10.0)
                              + reader.number("LLMMESH_DRAIN_DELAY_SECONDS",
                                              REPLICA_DRAIN_DELAY_SECONDS)
                              + STOP_MARGIN_SECONDS)
        # Decided here, once, and passed on: what the banner shows is what runs.
        self.workers = {name: service_workers(reader, name) for name in SERVICES}
        for name, count in self.workers.items():
            self.env[f"LLMMESH_{name.upper()}_WORKERS"] = str(count)
        # `replicas`: the --replicas flag, over LLMMESH_REPLICAS.
        self.replicas = replica_counts(reader, replicas)
        # Callers given each peer's replica list so far: rotates the list per caller.
        self._callers: dict[str, int] = {}

    def say(self, line: str) -> None:
        print(f"llmmesh: {line}", file=self.out, flush=True)

    def start(self) -> None:
        reader = Env(self.env)
        if reader.optional("LLMMESH_REDIS_URL") is None:
            port = reader.integer("LLMMESH_REDIS_PORT", 6380, minimum=1, maximum=65535)
            redis = self.redis = LocalRedis(
                self.data_dir / "redis", port,
                binary=_optional_path(reader.optional("LLMMESH_REDIS_SERVER")))

            def spawn_redis() -> subprocess.Popen[bytes]:
                if redis.process is None:
                    redis.start()
                else:
                    redis.restart()
                assert redis.process is not None
                return redis.process

            child = Child("redis", f"127.0.0.1:{port}", 0, redis.log_path, spawn_redis,
                          lambda _child, _deadline: None, REDIS_STOP_SECONDS)
            self.children.append(child)
            child.process = child.spawn()
            self.env["LLMMESH_REDIS_URL"] = redis.url
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        host = reader.text("LLMMESH_LISTEN_HOST", "127.0.0.1")
        connect = _connect_host(host)
        # Every replica's (port, metrics port), then its peers' gRPC targets.
        layout: dict[str, list[tuple[int, int]]] = {}
        for name in SERVICES:
            where = endpoint(reader, name, host)
            layout[name] = replica_ports(reader, name, where.port, where.metrics_port,
                                         self.replicas[name])
        targets = {name: [f"{connect}:{port}" for port, _ in ports]
                   for name, ports in layout.items() if len(ports) > 1}
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        # Replica 1 of each service first (the single process, without replicas), the
        # others once it is healthy.
        for wave in (slice(0, 1), slice(1, None)):
            started = []
            for name in SERVICES:
                count = len(layout[name])
                for index, (port, metrics) in list(enumerate(layout[name]))[wave]:
                    address = (endpoint(reader, name, host).address if count == 1
                               else f"{connect}:{port}")
                    started.append(self._service(
                        self._replica_name(name, index, count), f"services.{name}",
                        address, metrics, logs, self.workers[name], service=name,
                        env=self._replica_env(name, port, metrics, targets)))
            for child in started:
                child.ready(child, deadline)
        metrics_port = reader.integer("LLMMESH_RATELIMIT_METRICS_PORT", RATELIMIT_METRICS_PORT,
                                      minimum=0, maximum=65535)
        first_port = reader.integer("LLMMESH_RATELIMIT_PORT", RATELIMIT_PORT, minimum=0,
                                    maximum=65535)
        count = self.replicas[RATELIMIT]
        limiters = []
        for index, (port, metrics) in enumerate(replica_ports(
                reader, RATELIMIT, first_port, metrics_port, count)):
            own = {"LLMMESH_RATELIMIT_PORT": str(port),
                   "LLMMESH_RATELIMIT_METRICS_PORT": str(metrics)}
            limiters.append(self._service(
                self._replica_name(RATELIMIT, index, count), "gateway.ratelimit",
                ratelimit_address(reader, host) if count == 1 else f"{connect}:{port}",
                metrics, logs, service=RATELIMIT,
                env=None if count == 1 else {**self.env, **own}))
        for child in limiters:
            child.ready(child, deadline)
        endpoints = {name: [_host_port(child.address) for child in self.children
                            if child.service == name]
                     for name in (*SERVICES, RATELIMIT) if self.replicas[name] > 1}
        self._start_edge(EdgeConfig.from_env(reader), logs, deadline, endpoints)

    @staticmethod
    def _replica_name(service: str, index: int, count: int) -> str:
        return service if count == 1 else f"{service}-{index + 1}"

    def _replica_env(self, service: str, port: int, metrics_port: int,
                     targets: dict[str, list[str]]) -> dict[str, str]:
        """The environment of one replica of `service`: its own ports, and for each peer
        that runs as replicas an `ipv4:` target of all of them, rotated per caller."""
        prefix = f"LLMMESH_{service.upper()}"
        env = {**self.env, f"{prefix}_PORT": str(port),
               f"{prefix}_METRICS_PORT": str(metrics_port)}
        if service in targets:  # several replicas behind Envoy's health checks
            env.setdefault("LLMMESH_DRAIN_DELAY_SECONDS", str(REPLICA_DRAIN_DELAY_SECONDS))
        for peer in PEERS.get(service, ()):
            if peer in targets:
                ring = targets[peer]
                shift = self._callers.get(peer, 0) % len(ring)
                self._callers[peer] = shift + 1
                rotated = ring[shift:] + ring[:shift]
                env[f"LLMMESH_{peer.upper()}_ADDRESS"] = "ipv4:" + ",".join(rotated)
        return env

    def _start_edge(self, config: EdgeConfig, logs: Path, deadline: float,
                    replicas: dict[str, list[tuple[str, int]]] | None = None) -> None:
        """Envoy, last: once everything it calls is up. `replicas`: every endpoint of a
        service that runs as several replicas."""
        self.otlp_collector = config.otlp_collector
        target = deployment.local(
            LLMMESH_SPEC, str(self.data_dir / "envoy"), listener_port=config.port,
            admin_port=config.admin_port, upstreams=config.upstreams,
            ratelimit=config.ratelimit, listen_address=config.listen_host,
            cors_origins=config.cors_origins, replicas=replicas,
            oidc_issuers=config.oidc_issuers, otlp_collector=config.otlp_collector)
        log_path = logs / "edge.log"

        def spawn() -> subprocess.Popen[bytes]:
            try:
                envoy = start_local_edge(LLMMESH_SPEC, target, log_path=log_path)
            except EnvoyError as error:
                raise RuntimeError(f"edge (envoy): {error}") from error
            self.edge_admin_port = envoy.admin_port
            assert envoy.process is not None
            return envoy.process

        connect = "127.0.0.1" if config.listen_host in {"0.0.0.0", "::"} else config.listen_host  # noqa: S104
        address = f"{connect}:{config.port}"
        child = Child("edge", address, 0, log_path, spawn,
                      lambda child, deadline: self._wait_http(
                          child, f"http://{address}{LLMMESH_SPEC.health_path}", deadline),
                      EDGE_STOP_SECONDS)
        self.children.append(child)
        child.process = child.spawn()
        child.ready(child, deadline)

    def _service(self, name: str, module: str, address: str, metrics_port: int,
                 logs: Path, workers: int = 1, *, service: str = "",
                 env: dict[str, str] | None = None) -> Child:
        """A Python service (or one replica of it, `name` of `service`) on `address`
        (`workers` processes), spawned in a process group of its own, not yet waited
        for: health SERVING on `address` means all of them are up."""
        log_path = logs / f"{name}.log"
        child_env = self.env if env is None else env

        def spawn() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as log:
                return subprocess.Popen(  # noqa: S603 — our own interpreter and module
                    [sys.executable, "-m", module], env=child_env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        child = Child(name, address, metrics_port, log_path, spawn, self._wait_serving,
                      self.service_grace, workers=workers, service=service)
        self.children.append(child)
        child.process = child.spawn()
        return child

    def _check_alive(self, child: Child) -> None:
        assert child.process is not None
        if self._stopping.is_set():
            raise StopRequested
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n"
                               + _tail(child.log_path))

    def _wait_http(self, child: Child, url: str, deadline: float) -> None:
        while True:
            self._check_alive(child)
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not answer {url}:\n"
                                   + _tail(child.log_path))
            time.sleep(0.1)

    def _wait_serving(self, child: Child, deadline: float) -> None:
        with grpc.insecure_channel(child.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive(child)
                try:
                    # types-grpcio-health-checking's HealthStub declares no methods (the
                    # generated class sets them in __init__).
                    answer = stub.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not become healthy:\n"
                                       + _tail(child.log_path))
                time.sleep(0.1)

    def describe(self) -> str:
        lines = ["llmmesh is running:"]
        for child in self.children:
            if child.name == "redis":
                continue
            metrics = (f"   metrics http://127.0.0.1:{child.metrics_port}/metrics"
                       if child.metrics_port else "")
            if child.name == "edge":
                metrics = (f"   envoy: REST, SSE and gRPC; admin http://127.0.0.1:"
                           f"{self.edge_admin_port}/")
            kind = "http" if child.name == "edge" else "grpc"
            workers = ("" if child.name == "edge" else
                       f"   {child.workers} worker{'s' if child.workers > 1 else ''}")
            lines.append(f"  {child.name:<10} {kind} {child.address:<18}{workers}{metrics}")
        if self.redis is not None:
            lines.append(f"  {'redis':<10} {self.redis.url}  ({self.redis.binary.name})")
        if self.otlp_collector is not None:
            host, port = self.otlp_collector
            lines.append(f"  {'traces':<10} OTLP/gRPC to {host}:{port} from every service "
                         "and Envoy")
        lines.append(f"  data dir   {self.data_dir}   (logs in {self.data_dir / 'logs'})")
        lines.append("Press Ctrl-C to stop.")
        return "\n".join(lines)

    def wait(self) -> str | None:
        """Supervise until asked to stop: restart whatever dies. Returns the name of a
        child that crashed too often (the caller then stops the mesh), else None."""
        while not self._stopping.wait(0.2):
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    try:
                        if not self._restart(child):
                            return child.name
                    except StopRequested:
                        return None
        return None

    def _restart(self, child: Child) -> bool:
        """Bring a dead child back, with backoff; False once it crashed too often."""
        while True:
            assert child.process is not None
            code = child.process.returncode
            now = time.monotonic()
            child.crashes = [t for t in child.crashes if now - t < self.restart_window] + [now]
            attempt = len(child.crashes)
            if attempt >= self.restart_limit:
                self.say(f"giving up on {child.name}: it exited {attempt} times within "
                         f"{self.restart_window:g} s (last exit code {code}); "
                         f"see {child.log_path}")
                return False
            delay = min(self.restart_backoff * 2 ** (attempt - 1), RESTART_BACKOFF_MAX_SECONDS)
            self.say(f"{child.name} exited with code {code} (log: {child.log_path}); "
                     f"restarting in {delay:g} s (attempt {attempt})")
            if self._stopping.wait(delay):
                raise StopRequested
            try:
                child.process = child.spawn()
                child.ready(child, time.monotonic() + STARTUP_TIMEOUT_SECONDS)
            except RuntimeError:
                if child.process.poll() is None:  # alive but never healthy: a crash too
                    self.say(f"{child.name} did not become healthy in "
                             f"{STARTUP_TIMEOUT_SECONDS:g} s; killing it")
                    _terminate(child.process, 1.0)
                continue  # counted and reported (exit code, log) at the top
            self.say(f"{child.name} is back on {child.address} (attempt {attempt})")
            return True

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop in dependency order: each group SIGTERMed and waited for (up to each
        child's grace, then SIGKILL) before the next group gets its signal."""
        by_service: dict[str, list[Child]] = {}
        for child in self.children:
            by_service.setdefault(child.service, []).append(child)
        for group in stop_groups(list(by_service)):
            members = [child for name in group for child in by_service[name]
                       if child.running()]
            for child in members:
                assert child.process is not None
                self.say(f"stopping {child.name}")
                child.process.send_signal(signal.SIGTERM)
            for child in members:
                assert child.process is not None
                code = _terminate(child.process, child.grace, signalled=True)
                self.say(f"stopped {child.name} (exit code {code})")


def _terminate(process: subprocess.Popen[bytes], grace: float,
               signalled: bool = False) -> int:
    """SIGTERM (unless already sent), wait up to `grace` s, then SIGKILL."""
    if not signalled and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh", description=__doc__.split("\n\n")[0]
                                     if __doc__ else None)
    parser.add_argument("--replicas", metavar="SERVICE=N[,SERVICE=N...]",
                        help="run services as N replicas each behind Envoy, e.g. "
                             "chat=2,auth=2 (also LLMMESH_REPLICAS; this wins per service)")
    args = parser.parse_args(argv)
    try:
        mesh = Mesh(dict(os.environ), replicas=args.replicas)
    except ValueError as error:  # ConfigError: a setting the launcher reads itself
        print(f"llmmesh failed to start: {error}", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: mesh.request_stop())
    try:
        mesh.start()
    except StopRequested:
        mesh.stop()
        return 0
    except (RuntimeError, OSError) as error:
        print(f"llmmesh failed to start: {error}", file=sys.stderr)
        mesh.stop()
        return 1
    print(mesh.describe(), flush=True)
    gave_up = mesh.wait()
    print("stopping llmmesh ...", flush=True)
    mesh.stop()
    if gave_up:
        print(f"llmmesh stopped: {gave_up} kept crashing; see {mesh.data_dir / 'logs'}",
              file=sys.stderr)
        return 1
    print("stopped.", flush=True)
    return 0


assert set(SERVICES) == set(DEFAULT_PORTS)
