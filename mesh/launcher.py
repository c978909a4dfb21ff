"""Runs the whole mesh on this machine: a local Redis (unless LLMMESH_REDIS_URL names
one), every service as its own process on 127.0.0.1, the rate limit service and Envoy
as the edge (REST, SSE and gRPC on :8080; its bootstrap generated from gateway/spec.py
for this machine into `<data dir>/envoy/`). Waits for each to report SERVING over gRPC
health checking (Envoy: its admin /ready, then GET /healthz through the edge), prints
the endpoints, and on Ctrl-C (or SIGTERM, or any process dying) stops everything: the
edge and services first, gracefully, then Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import deployment
from gateway.config import RATELIMIT_METRICS_PORT, EdgeConfig, ratelimit_address
from gateway.envoy_process import EnvoyError
from gateway.local_edge import start_local_edge
from gateway.spec import LLMMESH_SPEC
from mesh.redis_server import LocalRedis
from services.runtime.config import DEFAULT_PORTS, Env, endpoint

SERVICES = ("auth", "embedding", "document", "chat")
STARTUP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int
    log_path: Path


class Mesh:
    """The processes of one local mesh."""

    def __init__(self, env: dict[str, str], out: IO[str] = sys.stdout) -> None:
        self.env = env
        self.out = out
        reader = Env(env)
        self.data_dir = Path(reader.text("LLMMESH_DATA_DIR", ".data")).resolve()
        self.env["LLMMESH_DATA_DIR"] = str(self.data_dir)
        self.redis: LocalRedis | None = None
        self.children: list[Child] = []
        self._stopping = threading.Event()
        self.edge_admin_port = 0

    def start(self) -> None:
        reader = Env(self.env)
        if reader.optional("LLMMESH_REDIS_URL") is None:
            port = reader.integer("LLMMESH_REDIS_PORT", 6380, minimum=1, maximum=65535)
            self.redis = LocalRedis(self.data_dir / "redis", port,
                                    binary=_optional_path(reader.optional("LLMMESH_REDIS_SERVER")))
            self.redis.start()
            self.env["LLMMESH_REDIS_URL"] = self.redis.url
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        host = reader.text("LLMMESH_LISTEN_HOST", "127.0.0.1")
        for name in SERVICES:
            where = endpoint(reader, name, host)
            self._spawn(name, f"services.{name}", where.address, where.metrics_port, logs)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        for child in self.children:
            self._wait_serving(child, deadline)
        metrics_port = reader.integer("LLMMESH_RATELIMIT_METRICS_PORT", RATELIMIT_METRICS_PORT,
                                  minimum=0, maximum=65535)
        limiter = self._spawn("ratelimit", "gateway.ratelimit", ratelimit_address(reader, host),
                              metrics_port, logs)
        self._wait_serving(limiter, deadline)
        self._start_edge(EdgeConfig.from_env(reader), logs, deadline)

    def _start_edge(self, config: EdgeConfig, logs: Path, deadline: float) -> None:
        """Envoy, last: once everything it calls is up."""
        target = deployment.local(
            LLMMESH_SPEC, str(self.data_dir / "envoy"), listener_port=config.port,
            admin_port=config.admin_port, upstreams=config.upstreams,
            ratelimit=config.ratelimit, listen_address=config.listen_host,
            cors_origins=config.cors_origins)
        log_path = logs / "edge.log"
        try:
            envoy = start_local_edge(LLMMESH_SPEC, target, log_path=log_path)
            self.edge_admin_port = envoy.admin_port
        except EnvoyError as error:
            raise RuntimeError(f"edge (envoy): {error}") from error
        assert envoy.process is not None
        connect = "127.0.0.1" if config.listen_host in {"0.0.0.0", "::"} else config.listen_host  # noqa: S104
        child = Child("edge", envoy.process, f"{connect}:{config.port}", 0, log_path)
        self.children.append(child)
        self._wait_http(child, f"http://{child.address}{LLMMESH_SPEC.health_path}", deadline)

    def _spawn(self, name: str, module: str, address: str, metrics_port: int,
               logs: Path) -> Child:
        log_path = logs / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
                [sys.executable, "-m", module], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(name, process, address, metrics_port, log_path)
        self.children.append(child)
        return child

    def _wait_http(self, child: Child, url: str, deadline: float) -> None:
        while True:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n"
                                   + _tail(child.log_path))
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
                if child.process.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n"
                                       + _tail(child.log_path))
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
            metrics = (f"   metrics http://127.0.0.1:{child.metrics_port}/metrics"
                       if child.metrics_port else "")
            if child.name == "edge":
                metrics = (f"   envoy: REST, SSE and gRPC; admin http://127.0.0.1:"
                           f"{self.edge_admin_port}/")
            kind = "http" if child.name == "edge" else "grpc"
            lines.append(f"  {child.name:<10} {kind} {child.address:<18}{metrics}")
        if self.redis is not None:
            lines.append(f"  {'redis':<10} {self.redis.url}  ({self.redis.binary.name})")
        lines.append(f"  data dir   {self.data_dir}   (logs in {self.data_dir / 'logs'})")
        lines.append("Press Ctrl-C to stop.")
        return "\n".join(lines)

    def wait(self) -> str | None:
        """Block until asked to stop or a child dies; returns the dead child's name."""
        while not self._stopping.wait(0.2):
            for child in self.children:
                if child.process.poll() is not None:
                    return child.name
        return None

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        for child in reversed(self.children):  # the edge first
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self.children:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def main() -> int:
    mesh = Mesh(dict(os.environ))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: mesh.request_stop())
    try:
        mesh.start()
    except (RuntimeError, OSError) as error:
        print(f"llmmesh failed to start: {error}", file=sys.stderr)
        mesh.stop()
        return 1
    print(mesh.describe(), flush=True)
    died = mesh.wait()
    print("stopping llmmesh ...", flush=True)
    mesh.stop()
    if died:
        print(f"{died} exited unexpectedly; see {mesh.data_dir / 'logs'}", file=sys.stderr)
        return 1
    print("stopped.", flush=True)
    return 0


assert set(SERVICES) == set(DEFAULT_PORTS)
